"""Readers and writers of image files. Every reader validates at the edge and raises
:class:`~medseg.errors.DataError` naming the file."""
