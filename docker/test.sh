#!/usr/bin/env bash
# `make docker-test`: build the CPU image and run the batch job, offline, on built-in cases.
#
# 1. Docker engine: uses a running one; otherwise starts `dockerd` (Debian: apt-get install docker.io)
#    with overlay2 storage and without touching the host's networking (--iptables=false
#    --bridge=none), and stops it again on exit (by PID), unmounting what it left under its exec-root.
# 2. Base image: $BASE_IMAGE, else debian:bookworm-slim if present or pullable, else a Debian root
#    made with debootstrap (apt-get install debootstrap) and imported with `docker import`
#    (for machines that reach no container registry).
# 3. A tiny model trained on built-in data is exported into docker/artifact/ (or ARTIFACT=folder).
# 4. Wheels are downloaded on the host into docker/wheels/ (the host's pip settings, CA bundle and
#    local wheels apply), so the build installs offline; with DOWNLOAD_WHEELS=0 the build uses the
#    index instead and gets the host's CA bundle as the EXTRA_CA_CERTS build argument.
# 5. Build (classic builder, --network host), then run the batch job exactly as documented:
#    --network none, a memory limit, the input mounted read-only; the outputs are checked.
# 6. The BraTS 2023-2025 challenge convention, the same way: a flat folder of <id>-t1n/-t1c/-t2w/-t2f
#    files in, <id>.nii.gz out in BraTS 2023 codes (names, grids and codes checked); the Dice of
#    those outputs against the BraTS-coded references, computed here with numpy, must equal
#    `medseg evaluate evaluate.labels=brats2023` of the same folders; a case missing its t1c file
#    fails alone (exit 2, the contrast named in predictions.json).
# Prints the image size, the build time and the per-case batch time. NO_CACHE=1 times a cold build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-docker/.work}
IMAGE=${IMAGE:-medseg:cpu}
MEMORY=${MEMORY:-4g}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOWNLOAD_WHEELS=${DOWNLOAD_WHEELS:-1}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKERD_PID=""
EXEC_ROOT=/run/medseg-docker-test  # /var/run is a link to /run; /proc/mounts shows the real path

log() { printf '[docker-test] %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null || true
    grep -o " $EXEC_ROOT[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null; done
  fi
  exit "$rc"
}
trap cleanup EXIT

mkdir -p "$WORK"
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { log "no Docker engine running and no dockerd (Debian: apt-get install docker.io)"; exit 2; }
  log "starting dockerd (overlay2, --iptables=false --bridge=none)"
  dockerd --storage-driver=overlay2 --iptables=false --bridge=none --exec-root="$EXEC_ROOT" \
    --pidfile="$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see $WORK/dockerd.log"; exit 2; }
fi

if [ -z "${BASE_IMAGE:-}" ]; then
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then BASE_IMAGE=debian:bookworm-slim
  elif docker image inspect medseg-base:bookworm >/dev/null 2>&1; then BASE_IMAGE=medseg-base:bookworm
  elif timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1; then BASE_IMAGE=debian:bookworm-slim
  else
    command -v debootstrap >/dev/null || { log "no registry and no debootstrap (apt-get install debootstrap)"; exit 2; }
    log "no registry reachable: building a Debian bookworm base with debootstrap from $DEBIAN_MIRROR"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1
    printf 'deb %s bookworm main\n' "$DEBIAN_MIRROR" >"$WORK/rootfs/etc/apt/sources.list"
    tar -C "$WORK/rootfs" -c . | docker import - medseg-base:bookworm >/dev/null
    rm -rf "$WORK/rootfs"
    BASE_IMAGE=medseg-base:bookworm
  fi
fi
log "base image: $BASE_IMAGE"

if [ -z "${ARTIFACT:-}" ]; then
  log "training a tiny model on built-in data for the image"
  rm -rf "$WORK/run" docker/artifact
  "$PY" -m medseg run synth.enabled=true synth.n=8 synth.n_test=3 synth.spacing=4.0 \
    "data.root=$WORK/data" "paths.cache_dir=$WORK/cache" "hydra.run.dir=$WORK/run" \
    'data.target_spacing=[4.0,4.0,4.0]' 'model.channels=[8,16,32]' 'model.strides=[2,2]' model.num_res_units=0 \
    'train.patch_size=[32,32,32]' train.max_epochs=2 train.iters_per_epoch=4 train.progress=false \
    train.augment.channel_dropout_prob=0.0 evaluate.n_figures=0 >"$WORK/train.log" 2>&1 || { log "training failed, see $WORK/train.log"; exit 2; }
  cp -r "$WORK/run/export/artifact" docker/artifact
  ARTIFACT=docker/artifact
fi

build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "ARTIFACT=$ARTIFACT")
if [ "$DOWNLOAD_WHEELS" = 1 ]; then
  log "downloading wheels into docker/wheels"
  "$PY" -m pip download --quiet -d docker/wheels -c constraints.txt torch==2.13.0 setuptools wheel \
    '.[onnx,dicom-seg]' >"$WORK/wheels.log" 2>&1 || { log "wheel download failed, see $WORK/wheels.log"; exit 2; }
  find docker/wheels -name 'medseg-*' -delete
else
  build_args+=(--build-arg "EXTRA_CA_CERTS=$(cat "$CA_BUNDLE")")
fi

log "building $IMAGE"
start=$(date +%s)
[ "${NO_CACHE:-0}" = 1 ] && build_args+=(--no-cache)
DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile -t "$IMAGE" "${build_args[@]}" . \
  >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; log "build failed, see $WORK/build.log"; exit 2; }
build_s=$(( $(date +%s) - start ))

rm -rf "$WORK/input" "$WORK/output" "$WORK/cases"
mkdir -p "$WORK/input" "$WORK/output"
# three built-in cases at the usual 1.5 mm (the image's model resamples them to its own spacing)
"$PY" -c "from medseg.data.synthetic import SynthConfig, write_msd_dataset as w; w('$WORK/cases', SynthConfig(n=4, n_test=3, seed=11))" \
  >/dev/null
cp "$WORK"/cases/imagesTs/*.nii.gz "$WORK/input/"
chmod 777 "$WORK/output"
log "batch job: --network none --memory $MEMORY, input read-only"
start=$(date +%s)
docker run --rm --network none --memory "$MEMORY" -v "$PWD/$WORK/input:/input:ro" -v "$PWD/$WORK/output:/output" \
  "$IMAGE" >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; log "batch job failed"; exit 2; }
run_s=$(( $(date +%s) - start ))

"$PY" - "$WORK" <<'PYCHECK'
import json, sys
from pathlib import Path
import nibabel as nib, numpy as np
work = Path(sys.argv[1])
summary = json.loads((work / "output" / "predictions.json").read_text())
inputs = sorted((work / "input").glob("*.nii.gz"))
assert summary["n_ok"] == len(inputs) and summary["n_failed"] == 0, summary
for f in inputs:
    out, img = nib.load(work / "output" / f.name), nib.load(f)
    assert out.shape == img.shape[:3], (f.name, out.shape, img.shape)
    assert np.allclose(out.affine, img.affine, atol=1e-5), f.name
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}, f.name
secs = [c["seconds"] for c in summary["cases"]]
print(f"[docker-test] outputs OK: {len(inputs)} cases on their input grids; per-case seconds "
      f"{', '.join(f'{s:.2f}' for s in secs)} (median {np.median(secs):.2f}); peak RSS "
      f"{max(c['peak_rss_mb'] for c in summary['cases']):.0f} MB", file=sys.stderr)
PYCHECK

log "the full pipeline in the container: medseg evaluate of the batch outputs against the references"
mkdir -p "$WORK/eval" && chmod 777 "$WORK/eval"
docker run --rm --network none --memory "$MEMORY" -v "$PWD/$WORK/output:/pred:ro" \
  -v "$PWD/$WORK/cases/labelsTs:/refs:ro" -v "$PWD/$WORK/input:/images:ro" -v "$PWD/$WORK/eval:/eval" "$IMAGE" \
  medseg evaluate evaluate.predictions=/pred evaluate.references=/refs evaluate.images=/images \
  evaluate.n_figures=1 hydra.run.dir=/eval >"$WORK/eval.log" 2>&1 || { tail -20 "$WORK/eval.log" >&2; log "evaluate in the container failed"; exit 2; }
test -s "$WORK/eval/report.html" && test -s "$WORK/eval/metrics.json" || { log "evaluate wrote no report"; exit 2; }

log "BraTS 2023 convention: flat <id>-t1n/-t1c/-t2w/-t2f.nii.gz folder, --network none --memory $MEMORY, input read-only"
B="$WORK/brats"
rm -rf "$B" && mkdir -p "$B/input" "$B/refs" "$B/output" "$B/eval" "$B/incomplete" "$B/out_incomplete"
"$PY" - "$B" <<'PYDATA'
import shutil, sys
from pathlib import Path
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_brats_dataset
work = Path(sys.argv[1])
cases = write_brats_dataset(work / "cases", SynthConfig(n=3, n_test=0, seed=13, tumour_free_fraction=0.0), "brats2023")
for case in sorted(cases.iterdir()):  # references in BraTS 2023 codes as <id>.nii.gz, images flat
    for f in sorted(case.glob("*.nii.gz")):
        seg = f.name.endswith("-seg.nii.gz")
        shutil.copy(f, work / ("refs" if seg else "input") / f.name.replace("-seg.nii.gz", ".nii.gz"))
PYDATA
chmod 777 "$B/output" "$B/eval" "$B/out_incomplete"
docker run --rm --network none --memory "$MEMORY" -v "$PWD/$B/input:/input:ro" -v "$PWD/$B/output:/output" \
  "$IMAGE" >"$B/run.log" 2>&1 || { cat "$B/run.log" >&2; log "BraTS batch job failed"; exit 2; }
docker run --rm --network none --memory "$MEMORY" -v "$PWD/$B/output:/pred:ro" -v "$PWD/$B/refs:/refs:ro" \
  -v "$PWD/$B/eval:/eval" "$IMAGE" medseg evaluate evaluate.predictions=/pred evaluate.references=/refs \
  evaluate.labels=brats2023 evaluate.n_figures=0 hydra.run.dir=/eval >"$B/eval.log" 2>&1 \
  || { tail -20 "$B/eval.log" >&2; log "medseg evaluate of the BraTS outputs failed"; exit 2; }
cp "$B"/input/*.nii.gz "$B/incomplete/"
lacking=$(ls "$B"/incomplete/*-t1c.nii.gz | head -1)
rm "$lacking"
rc=0
docker run --rm --network none --memory "$MEMORY" -v "$PWD/$B/incomplete:/input:ro" -v "$PWD/$B/out_incomplete:/output" \
  "$IMAGE" >"$B/incomplete.log" 2>&1 || rc=$?
[ "$rc" = 2 ] || { cat "$B/incomplete.log" >&2; log "a case missing $(basename "$lacking"): exit $rc, expected 2"; exit 2; }

"$PY" - "$B" "$(basename "$lacking")" <<'PYCHECK'
import json, sys
from pathlib import Path
import nibabel as nib, numpy as np
work, lacking = Path(sys.argv[1]), sys.argv[2]
ids = sorted(f.name.removesuffix("-t1n.nii.gz") for f in (work / "input").glob("*-t1n.nii.gz"))
summary = json.loads((work / "output" / "predictions.json").read_text())
assert summary["layout"] == "brats2023" and summary["labels"] == "brats2023", summary
assert summary["n_ok"] == len(ids) == 3 and summary["n_failed"] == 0, summary
assert sorted(f.name for f in (work / "output").glob("*.nii.gz")) == [f"{i}.nii.gz" for i in ids]
metrics = {c["case"]: c for c in json.loads((work / "eval" / "metrics.json").read_text())["cases"]}
# BraTS 2023+ codes: 1 necrotic/non-enhancing core, 2 edema/SNFH, 3 enhancing
regions = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
rows = []
for i in ids:
    out, img = nib.load(work / "output" / f"{i}.nii.gz"), nib.load(work / "input" / f"{i}-t1n.nii.gz")
    assert out.shape == img.shape, (i, out.shape, img.shape)
    assert np.allclose(out.affine, img.affine, atol=1e-5), i
    pred, ref = np.asarray(out.dataobj), np.asarray(nib.load(work / "refs" / f"{i}.nii.gz").dataobj)
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 3}, (i, np.unique(pred))
    for region, codes in regions.items():
        p, r = np.isin(pred, codes), np.isin(ref, codes)
        assert r.any(), (i, region)
        dice = 2.0 * np.count_nonzero(p & r) / (np.count_nonzero(p) + np.count_nonzero(r))
        theirs = metrics[i][region]["dice"]
        assert abs(dice - theirs) < 1e-6, (i, region, dice, theirs)
        rows.append(dice)
table = np.array(rows).reshape(len(ids), len(regions))
print(f"[docker-test] BraTS 2023 outputs OK: {len(ids)} <id>.nii.gz on the input grids, codes in {{0,1,2,3}}; "
      f"Dice (numpy, BraTS codes) = medseg evaluate, per region mean " + ", ".join(
          f"{r} {m:.4f}" for r, m in zip(regions, table.mean(axis=0))), file=sys.stderr)
incomplete = json.loads((work / "out_incomplete" / "predictions.json").read_text())
failed = [c for c in incomplete["cases"] if c["status"] == "failed"]
assert incomplete["n_ok"] == 2 and len(failed) == 1 and lacking in failed[0]["error"], incomplete
assert failed[0]["case"] == lacking.removesuffix("-t1c.nii.gz"), failed
print(f"[docker-test] a case without its t1c file: exit 2, the other 2 segmented; error: {failed[0]['error']}",
      file=sys.stderr)
PYCHECK

size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(( size / 1000000 )) MB; build ${build_s} s; batch run ${run_s} s for $(ls "$WORK/input" | wc -l) cases (container start included)"
log "PASSED"
