"""Preprocessing: the lung crop (box, crop, paste back), on phantoms and real slices."""

import numpy as np
import pytest
from PIL import Image

from mtl_jax.data import pipeline, preprocess


def chest_phantom(size=128, blank_outside=False):
  """A bright body ellipse with two dark lungs, black air around; a lesion mask."""
  yy, xx = np.mgrid[:size, :size] / size
  body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
  left = ((xx - 0.33) / 0.12) ** 2 + ((yy - 0.5) / 0.18) ** 2 < 1
  right = ((xx - 0.67) / 0.12) ** 2 + ((yy - 0.5) / 0.18) ** 2 < 1
  lesion = ((xx - 0.3) / 0.04) ** 2 + ((yy - 0.45) / 0.04) ** 2 < 1
  image = np.where(body, 0.75, 0.0) + 0.05 * np.random.default_rng(0).random((size, size))
  image = np.where(left | right, 0.15, image)
  image = np.where(lesion, 0.5, image)
  if blank_outside:
    image = np.where(left | right, image, 0.0)
  return image.astype(np.float32), lesion.astype(np.uint8), left | right


@pytest.mark.parametrize('blank_outside', [False, True])
def test_lung_box_is_a_square_around_both_lungs(blank_outside):
  image, _, lungs = chest_phantom(blank_outside=blank_outside)
  top, left, side = preprocess.lung_box(image)
  rows, cols = np.nonzero(lungs)
  assert top <= rows.min() and rows.max() < top + side
  assert left <= cols.min() and cols.max() < left + side
  assert side < 0.9 * image.shape[0]  # the body and air around were cut away
  assert preprocess.lung_box(np.zeros((64, 64), np.float32)) is None


def test_image_and_mask_cropped_together_and_pasted_back():
  image, lesion, _ = chest_phantom()
  out = pipeline.crop_to_lungs({'image': image, 'mask': lesion})
  assert out['image'].shape == image.shape and out['mask'].dtype == lesion.dtype
  assert out['mask'].sum() > lesion.sum()  # magnified
  bright_lesion = (out['image'] > 0.4) & (out['image'] < 0.6)
  assert (bright_lesion & (out['mask'] == 1)).sum() > 0.8 * out['mask'].sum()
  box = preprocess.lung_box(image)
  back = preprocess.paste_from_box(out['mask'].astype(np.float32), box, image.shape[0])
  assert 2 * ((back > 0.5) & (lesion > 0)).sum() / ((back > 0.5).sum() + lesion.sum()) > 0.9
  probs = np.stack([1 - out['mask'], out['mask']], -1).astype(np.float32)
  pasted = preprocess.paste_from_box(probs, box, image.shape[0], fill=np.eye(2)[0])
  assert np.allclose(pasted[0, 0], [1, 0])  # outside the box: background


def test_lung_box_on_real_slices_of_every_look(shared_data):
  paths = [shared_data / 'mosmed_slices' / 'ct0_normal' / 'img0.jpg',
           *sorted((shared_data / 'ucsd_covid_ct' / 'images' / 'CT_COVID').iterdir())[:3],
           *sorted((shared_data / 'sars_cov2_ct' / 'covid').iterdir())[:2],
           *sorted((shared_data / 'china_negative' / 'normal').iterdir())[:2]]
  for path in paths:
    gray = np.asarray(Image.open(path).convert('L'))
    image = preprocess.resize_image(preprocess.square_pad(preprocess.scale_8bit(gray)), 128)
    box = preprocess.lung_box(image)
    assert box is not None, path
    top, left, side = box
    assert 40 <= side <= 128 and top + side <= 128 and left + side <= 128, (path, box)
    # The lungs are dark: the crop is darker on average than the slice's foreground.
    crop = image[top:top + side, left:left + side]
    assert crop[crop > 0.02].mean() <= image[image > 0.02].mean() + 0.05, path
