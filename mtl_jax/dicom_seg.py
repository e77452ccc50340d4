"""The lesion mask as a DICOM Segmentation (DICOM-SEG) of the source series.

For DICOM input, PACS viewers and the tools radiology teams use read a
DICOM-SEG that references the series it segments, not a NIfTI file
(TotalSegmentator's users asked for it: its issues #328, #363). highdicom
writes it: one frame per source image, in that image's own pixel grid, each
segment a lesion class. The mask `predict` made lives in the study's
canonical (RAS) voxel grid; each source pixel takes the label of the voxel
its centre falls in (patient coordinates from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing), so an oblique or flipped series
gets a SEG that lies on its images.
"""

from __future__ import annotations

import os

import numpy as np

from mtl_jax.errors import UserError

SERIES_DESCRIPTION = 'mtl-jax lesions (research use only)'
# Segment codes: SNOMED CT where a concept is sure (52988006 Lesion, 95436008
# Lung consolidation); the project's own scheme otherwise, as DICOM allows.
_PRIVATE_SCHEME = '99MTLJAX'


def _segment_codes(num_classes: int):
  from highdicom.sr.coding import CodedConcept  # pylint: disable=g-import-not-at-top
  abnormal = CodedConcept('49755003', 'SCT', 'Morphologically Abnormal Structure')
  if num_classes <= 1:
    return [('COVID-19 lesion', abnormal, CodedConcept('52988006', 'SCT', 'Lesion'))]
  return [('ground-glass opacity', abnormal,
           CodedConcept('GGO', _PRIVATE_SCHEME, 'Ground-glass opacity')),
          ('consolidation', abnormal, CodedConcept('95436008', 'SCT', 'Lung consolidation'))]


# Patient and study attributes a SEG copies from its source images; an
# anonymised export may lack them, and the SEG then carries them empty.
_PATIENT_AND_STUDY = ('PatientID', 'PatientName', 'PatientBirthDate', 'PatientSex',
                      'StudyID', 'StudyDate', 'StudyTime', 'ReferringPhysicianName',
                      'AccessionNumber')


def _source_images(study):
  import pydicom  # pylint: disable=g-import-not-at-top
  images = []
  for name in sorted(os.listdir(study.path)):
    path = os.path.join(study.path, name)
    if not os.path.isfile(path):
      continue
    try:
      ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError):
      continue
    if getattr(ds, 'SeriesInstanceUID', None) == study.series_uid and 'PixelData' in ds:
      for keyword in _PATIENT_AND_STUDY:  # type 2 in a SEG: present, possibly empty
        if keyword not in ds:
          setattr(ds, keyword, '')
      images.append(ds)
  images.sort(key=lambda ds: int(getattr(ds, 'InstanceNumber', 0) or 0))
  return images


def frame_labels(ds, canonical_labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """(rows, cols) labels of one source image: nearest canonical voxel of
  each pixel centre (`affine`: canonical voxel -> RAS mm)."""
  rows, cols = int(ds.Rows), int(ds.Columns)
  origin = np.asarray(ds.ImagePositionPatient, float)
  orientation = np.asarray(ds.ImageOrientationPatient, float)
  along_row, along_col = orientation[:3], orientation[3:]  # LPS directions
  spacing_r, spacing_c = (float(v) for v in ds.PixelSpacing)
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
  lps = (origin + c[..., None] * spacing_c * along_row + r[..., None] * spacing_r * along_col)
  ras = lps * np.array([-1.0, -1.0, 1.0])
  voxel = np.rint((np.c_[ras.reshape(-1, 3), np.ones(rows * cols)]
                   @ np.linalg.inv(affine).T)[:, :3]).astype(int)
  inside = np.all((voxel >= 0) & (voxel < canonical_labels.shape), axis=1)
  out = np.zeros(rows * cols, np.uint8)
  out[inside] = canonical_labels[tuple(voxel[inside].T)]
  return out.reshape(rows, cols)


def write(study, canonical_labels: np.ndarray, path, num_classes: int,
          software_version: str) -> str:
  """Write the DICOM-SEG of `canonical_labels` (0 background, k class k) for
  a DICOM `study`; returns the file name."""
  if study.kind != 'dicom' or study.series_uid is None:
    raise UserError(f'{study.path}: --output_type dicom_seg needs DICOM input '
                    f'(this is {study.kind}); NIfTI is written for every input')
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  images = _source_images(study)
  if any('FrameOfReferenceUID' not in ds for ds in images):
    raise UserError(f'{study.path}: the series has no FrameOfReferenceUID, which a '
                    'DICOM-SEG must share with it; use the NIfTI mask')
  frames = np.stack([frame_labels(ds, canonical_labels, study.affine) for ds in images])
  descriptions = [
      hd.seg.SegmentDescription(
          segment_number=k + 1, segment_label=label, segmented_property_category=category,
          segmented_property_type=kind,
          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
          algorithm_identification=hd.AlgorithmIdentificationSequence(
              name='mtl-jax', version=software_version,
              family=hd.sr.coding.CodedConcept('123109', 'DCM', 'Artificial Intelligence')))
      for k, (label, category, kind) in enumerate(_segment_codes(num_classes))]
  seg = hd.seg.Segmentation(
      source_images=images, pixel_array=frames,
      segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
      segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
      sop_instance_uid=hd.UID(), instance_number=1, manufacturer='mtl-jax',
      manufacturer_model_name='mtl-jax', software_versions=software_version,
      device_serial_number='0', series_description=SERIES_DESCRIPTION)
  name = f'{os.fspath(path)}.dcm'
  seg.save_as(name)
  return os.path.basename(name)
