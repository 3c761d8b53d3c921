/* medseg's offline case viewer, on NiiVue (inlined before this script as the global `niivue`).
 *
 * Reads the JSON in <script id="medseg-viewer-data">: {regions: [{name, colour, reference_colour}],
 * columns: [...], cases: [{name, cells, embedded, note, contrasts: {name: base64 .nii.gz},
 * prediction, reference, uncertainty, focus: [i, j, k]}]}. Draws the case list, the controls and
 * one NiiVue canvas, and publishes `window.medsegViewer`: {ready, errors, caseIndex, show(i),
 * setLayer(name, on), setRegion(i, on), setContrast(name), setPlane(name), probe()} so that a test
 * (or a curious reader) can drive it and read what the canvas shows.
 */
(function () {
  'use strict';
  var status = window.medsegViewer;
  var data = JSON.parse(document.getElementById('medseg-viewer-data').textContent);
  var layers = {prediction: true, reference: true, uncertainty: true};
  var regionsOn = data.regions.map(function () { return true; });
  var contrast = null;
  var nv = null;

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); }
    return out.buffer;
  }

  function labelColormap(key) {
    var cm = {R: [0], G: [0], B: [0], A: [0], I: [0], labels: ['background']};
    data.regions.forEach(function (r, i) {
      var c = r[key];
      cm.R.push(c[0]); cm.G.push(c[1]); cm.B.push(c[2]); cm.A.push(regionsOn[i] ? 255 : 0);
      cm.I.push(i + 1); cm.labels.push(r.name);
    });
    return cm;
  }

  async function volume(b64, name, colormap, opacity, calMin, calMax) {
    return niivue.NVImage.loadFromUrl({url: name, buffer: bytes(b64), name: name, colormap: colormap, opacity: opacity,
                                       cal_min: calMin, cal_max: calMax, trustCalMinMax: true});
  }

  function clear() {
    nv.volumes.slice().forEach(function (v) { nv.removeVolume(v); });
  }

  async function show(index) {
    var c = data.cases[index];
    if (!c.embedded) { throw new Error('case ' + c.name + ' is not embedded: ' + c.note); }
    status.ready = false;
    clear();
    var names = Object.keys(c.contrasts);
    if (names.indexOf(contrast) < 0) { contrast = names[0]; }
    nv.addVolume(await volume(c.contrasts[contrast], c.name + '_' + contrast + '.nii.gz', 'gray', 1, 0, 255));
    var maps = [['uncertainty', c.uncertainty], ['reference', c.reference], ['prediction', c.prediction]];
    for (var m = 0; m < maps.length; m++) {
      var key = maps[m][0], b64 = maps[m][1];
      if (!b64) { continue; }
      var max = key === 'uncertainty' ? c.uncertainty_max : data.regions.length;
      var img = await volume(b64, c.name + '_' + key + '.nii.gz', key === 'uncertainty' ? 'hot' : 'gray',
                             layers[key] ? (key === 'uncertainty' ? 0.5 : 0.7) : 0,
                             key === 'uncertainty' ? 0.1 * max : 0, max);
      if (key !== 'uncertainty') { img.setColormapLabel(labelColormap(key === 'reference' ? 'reference_colour' : 'colour')); }
      img.medsegLayer = key;
      nv.addVolume(img);
    }
    nv.updateGLVolume();
    status.caseIndex = index;
    status.caseName = c.name;
    focus(c.focus);
    markRow(index);
    renderContrasts(names);
    status.ready = true;
    return c.name;
  }

  function focus(vox) {
    nv.scene.crosshairPos = nv.vox2frac(vox);
    nv.updateGLVolume();
    syncSliders();
  }

  function setLayer(key, on) {
    layers[key] = on;
    nv.volumes.forEach(function (v, i) {
      if (v.medsegLayer === key) { nv.setOpacity(i, on ? (key === 'uncertainty' ? 0.5 : 0.7) : 0); }
    });
    nv.updateGLVolume();
  }

  function setRegion(i, on) {
    regionsOn[i] = on;
    nv.volumes.forEach(function (v) {
      if (v.medsegLayer === 'reference') { v.setColormapLabel(labelColormap('reference_colour')); }
      if (v.medsegLayer === 'prediction') { v.setColormapLabel(labelColormap('colour')); }
    });
    nv.updateGLVolume();
  }

  function setPlane(name) {
    var types = {multiplanar: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial,
                 coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal};
    nv.setSliceType(types[name]);
  }

  function sliders() { return Array.from(document.querySelectorAll('#medseg-viewer input.slice')); }

  function syncSliders() {
    var dims = nv.volumes[0].hdr.dims, vox = nv.frac2vox(nv.scene.crosshairPos);
    sliders().forEach(function (s, a) { s.max = dims[a + 1] - 1; s.value = vox[a]; });
  }

  function onSlider() {
    var vox = sliders().map(function (s) { return Number(s.value); });
    nv.scene.crosshairPos = nv.vox2frac(vox);
    nv.drawScene();
  }

  function markRow(index) {
    document.querySelectorAll('#medseg-case-list tbody tr').forEach(function (tr) {
      tr.classList.toggle('current', Number(tr.dataset.index) === index);
    });
  }

  function renderContrasts(names) {
    var box = document.getElementById('medseg-contrast');
    box.textContent = '';
    names.forEach(function (n) {
      var b = document.createElement('button');
      b.textContent = n; b.disabled = n === contrast;
      b.addEventListener('click', function () { contrast = n; run(show(status.caseIndex)); });
      box.appendChild(b);
    });
  }

  function caseList() {
    var table = document.getElementById('medseg-case-list');
    var head = table.createTHead().insertRow();
    data.columns.forEach(function (col) { var th = document.createElement('th'); th.textContent = col; head.appendChild(th); });
    var body = table.createTBody();
    data.cases.forEach(function (c, i) {
      var tr = body.insertRow();
      tr.dataset.index = i;
      if (!c.embedded) { tr.className = 'not-embedded'; tr.title = c.note; }
      c.cells.forEach(function (v) { var td = tr.insertCell(); td.textContent = v; td.title = v; });
      tr.addEventListener('click', function () { if (c.embedded) { run(show(i)); } });
    });
  }

  function controls() {
    var box = document.getElementById('medseg-layers');
    ['prediction', 'reference', 'uncertainty'].forEach(function (key) {
      if (!data.cases.some(function (c) { return c[key]; })) { return; }
      box.appendChild(checkbox(key, layers[key], function (on) { setLayer(key, on); }));
    });
    data.regions.forEach(function (r, i) {
      var label = checkbox(r.name.replace(/_/g, ' '), true, function (on) { setRegion(i, on); });
      label.insertBefore(swatch(r.colour), label.lastChild);
      if (data.cases.some(function (c) { return c.reference; })) { label.insertBefore(swatch(r.reference_colour), label.lastChild); }
      box.appendChild(label);
    });
    document.getElementById('medseg-plane').addEventListener('change', function (e) { setPlane(e.target.value); });
    sliders().forEach(function (s) { s.addEventListener('input', onSlider); });
  }

  function checkbox(text, on, change) {
    var label = document.createElement('label'), input = document.createElement('input');
    input.type = 'checkbox'; input.checked = on;
    input.addEventListener('change', function () { change(input.checked); });
    label.appendChild(input); label.appendChild(document.createTextNode(' ' + text));
    return label;
  }

  function swatch(c) {
    var s = document.createElement('span');
    s.className = 'swatch'; s.style.background = 'rgb(' + c.join(',') + ')';
    return s;
  }

  /* What the canvas shows now: pixels of the image (grey), of each region's colour (prediction and
   * reference palettes, matched by chroma so that any opacity over any grey matches), a checksum. */
  function probe() {
    nv.drawScene();
    var gl = nv.gl, w = gl.drawingBufferWidth, h = gl.drawingBufferHeight, px = new Uint8Array(w * h * 4);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
    var out = {width: w, height: h, grey: 0, coloured: 0, checksum: 0, prediction: [], reference: []};
    var palettes = {prediction: data.regions.map(function (r) { return chroma(r.colour); }),
                    reference: data.regions.map(function (r) { return chroma(r.reference_colour); })};
    out.prediction = palettes.prediction.map(function () { return 0; });
    out.reference = palettes.reference.map(function () { return 0; });
    for (var i = 0; i < px.length; i += 4) {
      var r = px[i], g = px[i + 1], b = px[i + 2];
      out.checksum = (out.checksum * 31 + r + 7 * g + 13 * b) % 1000000007;
      var hi = Math.max(r, g, b), lo = Math.min(r, g, b);
      if (hi - lo < 12) { if (hi > 24) { out.grey++; } continue; }
      if (hi - lo < 40) { continue; }
      out.coloured++;
      var c = chroma([r, g, b]);
      ['prediction', 'reference'].forEach(function (key) {
        palettes[key].forEach(function (p, k) { if (dot(p, c) > 0.97) { out[key][k]++; } });
      });
    }
    return out;
  }

  function chroma(c) {
    var lo = Math.min(c[0], c[1], c[2]), v = [c[0] - lo, c[1] - lo, c[2] - lo];
    var n = Math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) || 1;
    return [v[0] / n, v[1] / n, v[2] / n];
  }

  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

  function run(promise) {
    return promise.catch(function (e) { status.errors.push(String(e && e.stack || e)); throw e; });
  }

  async function start() {
    caseList();
    var first = data.cases.findIndex(function (c) { return c.embedded; });
    if (first < 0) { status.ready = true; return; }
    nv = new niivue.Niivue({backColor: [0, 0, 0, 1], crosshairColor: [0.85, 0.85, 0.85, 0.6], show3Dcrosshair: false, isColorbar: false,
                            multiplanarForceRender: true, logLevel: 'error', dragAndDropEnabled: false});
    await nv.attachToCanvas(document.getElementById('medseg-canvas'));
    nv.setSliceType(nv.sliceTypeMultiplanar);
    nv.onLocationChange = function (loc) {
      document.getElementById('medseg-location').textContent = loc.string || '';
      syncSliders();
    };
    controls();
    await show(first);
  }

  status.cases = data.cases.map(function (c) { return c.name; });
  status.show = function (i) { return run(show(i)); };
  status.setLayer = setLayer;
  status.setRegion = setRegion;
  status.setPlane = setPlane;
  status.setContrast = function (n) { contrast = n; return run(show(status.caseIndex)); };
  status.probe = probe;
  status.snapshot = function () { nv.drawScene(); return nv.canvas.toDataURL('image/png'); };
  status.started = run(start());
})();
