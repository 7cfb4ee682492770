"""Tests of jaxgen.data: embedded sources, TFDS via mock_data, the Loader, sharding."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

from jaxgen import data
from jaxgen.data import digits as digits_lib
from jaxgen.data import shapes as shapes_lib
from jaxgen.parallel import make_mesh, shard_batch


@pytest.fixture(scope="module")
def shapes_train():
  return data.get_source("shapes", "train")


@pytest.fixture(scope="module")
def digits_test():
  return data.get_source("digits", "test")


def _mock_tfds(num_examples):
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


# ---------------------------------------------------------------------------- digits


def test_digits_splits_are_a_partition_of_sklearn_digits_scaled_to_unit_range():
  train = data.load_all(data.get_source("digits", "train"))
  test = data.load_all(data.get_source("digits", "test"))
  assert train["image"].shape == (1497, 8, 8, 1) and test["image"].shape == (300, 8, 8, 1)
  assert train["image"].dtype == np.float32 and train["label"].dtype == np.int32
  for split in (train, test):
    assert split["image"].min() == -1.0 and split["image"].max() == 1.0
    np.testing.assert_array_equal(np.unique(split["label"]), np.arange(10))
  # Together the splits are exactly sklearn's 1797 images, with pixel p -> p / 8 - 1.
  ref = load_digits()
  ours = np.concatenate([train["image"], test["image"]]).reshape(1797, 64)
  ours_labels = np.concatenate([train["label"], test["label"]])
  want = ref.images.reshape(1797, 64) / 8.0 - 1.0
  ours_rows = sorted(zip(map(tuple, ours.tolist()), ours_labels.tolist()))
  want_rows = sorted(zip(map(tuple, want.tolist()), ref.target.tolist()))
  assert ours_rows == want_rows


def test_digits_split_is_fixed_and_deterministic(digits_test):
  before = data.load_all(digits_test)
  digits_lib._digits_arrays.cache_clear()
  after = data.load_all(data.get_source("digits", "test"))
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])


def test_digits_resize_shape_range_and_bilinear_closed_form():
  src = data.get_source("digits", "train", image_size=16)
  assert src.image_shape == (16, 16, 1)
  batch = src[np.arange(64)]
  assert batch["image"].shape == (64, 16, 16, 1)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  # 2x bilinear upsampling with half-pixel centres: [a, b] -> [a, a+(b-a)/4, a+3(b-a)/4, b].
  x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, :, :, None]
  row = np.array([0.0, 0.25, 0.75, 1.0])
  want = row[None, :] + 2 * row[:, None]
  np.testing.assert_allclose(data.resize_images(x, 4)[0, :, :, 0], want, atol=1e-6)
  # Downsampling is antialiased: a pixel-level checkerboard averages to ~0 (naive
  # subsampling would keep +-1).
  checker = (np.indices((16, 16)).sum(0) % 2 * 2 - 1).astype(np.float32)[None, :, :, None]
  small = data.resize_images(checker, 8)
  assert np.abs(small[0, 1:-1, 1:-1]).max() < 1e-5


# ---------------------------------------------------------------------------- shapes


def test_shapes_deterministic_in_seed_and_splits_differ(shapes_train):
  a = data.make_shapes(300, 32, 7)
  data.make_shapes.cache_clear()
  b = data.make_shapes(300, 32, 7)
  c = data.make_shapes(300, 32, 8)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["image"], c["image"])
  test = data.get_source("shapes", "test")
  assert (len(shapes_train), len(test)) == (10_000, 2_000)
  n = 500
  assert np.mean(shapes_train[np.arange(n)]["image"] == test[np.arange(n)]["image"]) < 0.99
  assert not np.array_equal(shapes_train[np.arange(n)]["color"], test[np.arange(n)]["color"])


def test_shapes_attributes_ranges_labels_and_every_value_occurs(shapes_train):
  batch = data.load_all(shapes_train)
  assert batch["image"].shape == (10_000, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() == -1.0 and batch["image"].max() <= 1.0
  for name, values in data.SHAPES_ATTRIBUTES.items():
    assert batch[name].dtype == np.int32
    np.testing.assert_array_equal(np.unique(batch[name]), np.arange(len(values)))
  np.testing.assert_array_equal(batch["label"], batch["shape"])
  assert shapes_train.num_classes == 3
  assert shapes_train.class_names == ("circle", "square", "triangle")
  assert shapes_train.attributes["position"][4] == "center"
  with pytest.raises(ValueError, match="unknown shapes attribute 'colour'"):
    shapes_train.attribute_values("colour")
  by_color = data.ShapesSource("test", label_attribute="color")
  np.testing.assert_array_equal(by_color[np.arange(50)]["label"], by_color[np.arange(50)]["color"])
  assert by_color.num_classes == 4


def test_shapes_captions_name_the_attributes(shapes_train):
  captions = shapes_train.captions
  assert len(captions) == len(shapes_train)
  assert captions[0].startswith("a ")
  batch = shapes_train[np.arange(500)]
  a = data.SHAPES_ATTRIBUTES
  for i in range(500):
    words = captions[i].split()
    assert words[:4] == ["a", a["size"][batch["size"][i]], a["color"][batch["color"][i]],
                         a["shape"][batch["shape"][i]]], captions[i]
    assert words[4:6] in (["at", "the"], ["on", "the"], ["in", "the"]), captions[i]
    assert " ".join(words[6:]) == a["position"][batch["position"][i]], captions[i]


def test_shapes_pixels_show_the_named_colour_position_and_size():
  n, size = 2000, 32
  d = data.make_shapes(n, size, 123)
  img = d["image"].astype(np.float64)  # [N, S, S, 3], black background
  palette = data.SHAPES_COLORS_RGB.astype(np.float64)
  # Fully covered pixels have exactly the named colour; the brightest pixel is one of them.
  flat = img.reshape(n, -1, 3)
  brightest = flat[np.arange(n), flat.sum(-1).argmax(1)]
  np.testing.assert_array_equal(brightest, palette[d["color"]])
  # Coverage of each pixel, from its brightness relative to the named colour.
  peak = palette[d["color"]].max(1)[:, None, None]
  cover = img.max(-1) / peak  # [N, S, S]
  area = cover.sum((1, 2))
  ys, xs = np.indices((size, size)) + 0.5
  cx = (cover * xs).sum((1, 2)) / area
  cy = (cover * ys).sum((1, 2)) / area
  # The centroid lies in the named 3x3 grid cell (triangles' centroid is below centre,
  # still inside the cell).
  cell = (cy * 3 // size) * 3 + cx * 3 // size
  np.testing.assert_array_equal(cell, d["position"])
  # Mean areas match the closed forms: circle pi r^2, square (1.7 r)^2, triangle 2 r^2,
  # r = half-extent * S * U(0.9, 1.1), E[U^2] = 1 + 0.2^2 / 12.
  e_scale2 = 1 + 0.2**2 / 12
  for s, k in enumerate((np.pi, 1.7**2, 2.0)):
    for z, half in enumerate((0.08, 0.14)):
      sel = (d["shape"] == s) & (d["size"] == z)
      want = k * (half * size) ** 2 * e_scale2
      np.testing.assert_allclose(area[sel].mean(), want, rtol=0.02)


def test_shapes_bad_arguments_raise():
  with pytest.raises(ValueError, match=r"image_size must be one of \(16, 32, 64\)"):
    data.get_source("shapes", "train", image_size=48)
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    data.get_source("shapes", "valid")
  assert data.get_source("shapes", "test", image_size=16).image_shape == (16, 16, 3)


# ---------------------------------------------------------------------------- loader


def test_loader_deterministic_and_epoch_is_the_seeded_permutation(digits_test):
  a = data.Loader(digits_test, 32, seed=3, shard_index=0, num_shards=1)
  b = data.Loader(digits_test, 32, seed=3, shard_index=0, num_shards=1)
  c = data.Loader(digits_test, 32, seed=4, shard_index=0, num_shards=1)
  assert a.steps_per_epoch == 9
  for epoch in range(2):
    got = np.concatenate([next(a)["index"] for _ in range(9)])
    other = np.concatenate([next(b)["index"] for _ in range(9)])
    np.testing.assert_array_equal(got, other)
    assert len(np.unique(got)) == 288  # each index at most once per epoch
    perm = np.random.Generator(np.random.PCG64([3, epoch])).permutation(300)
    np.testing.assert_array_equal(got, perm[:288])
  first = next(data.Loader(digits_test, 32, seed=3, shard_index=0, num_shards=1))
  assert not np.array_equal(next(c)["index"], first["index"])


def test_loader_eval_pass_covers_split_once_with_partial_last_batch(digits_test):
  loader = data.Loader(digits_test, 64, seed=0, shuffle=False, drop_remainder=False,
                       num_epochs=1, shard_index=0, num_shards=1)
  batches = list(loader)
  assert [len(b["index"]) for b in batches] == [64, 64, 64, 64, 44]
  assert loader.steps_per_epoch == 5
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(300))
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]),
                                data.load_all(digits_test)["image"])
  with pytest.raises(StopIteration):
    next(loader)


def test_loader_resume_from_json_state_gives_identical_batches_across_epochs(digits_test):
  kw = dict(seed=11, shard_index=0, num_shards=1)
  original = data.Loader(digits_test, 40, **kw)  # 7 steps per epoch
  for _ in range(5):
    next(original)
  state = json.loads(json.dumps(original.get_state()))
  assert (state["epoch"], state["position"], state["seed"]) == (0, 5, 11)
  restored = data.Loader(digits_test, 40, **kw)
  restored.set_state(state)
  for _ in range(6):  # crosses the epoch boundary after 2 batches
    want, got = next(original), next(restored)
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  assert restored.get_state() == original.get_state() and restored.epoch == 1


def test_loader_state_validation(digits_test):
  loader = data.Loader(digits_test, 40, seed=1, shard_index=0, num_shards=1)
  state = loader.get_state()
  other = data.Loader(digits_test, 40, seed=2, shard_index=0, num_shards=1)
  with pytest.raises(ValueError, match="seed=1 vs 2"):
    other.set_state(state)
  with pytest.raises(ValueError, match="keys"):
    loader.set_state({k: v for k, v in state.items() if k != "position"})
  with pytest.raises(ValueError, match="position"):
    loader.set_state({**state, "position": 7})


def test_loader_host_shards_are_disjoint_and_cover(digits_test):
  for drop, covered in ((True, 3 * (300 // 3)), (False, 300)):
    per_host = []
    for k in range(3):
      loader = data.Loader(digits_test, 20, seed=5, shard_index=k, num_shards=3,
                           drop_remainder=drop, num_epochs=1)
      per_host.append(np.concatenate([b["index"] for b in loader]))
    union = np.concatenate(per_host)
    assert len(union) == len(np.unique(union)) == covered
    if not drop:
      np.testing.assert_array_equal(np.sort(union), np.arange(300))


def test_loader_rejects_bad_batch_size(digits_test):
  with pytest.raises(ValueError, match="batch_size must be in"):
    data.Loader(digits_test, 0, seed=0, shard_index=0, num_shards=1)
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 150\]"):
    data.Loader(digits_test, 151, seed=0, shard_index=0, num_shards=2)


def test_source_indexing_errors(digits_test):
  with pytest.raises(IndexError, match=r"\[0, 300\)"):
    digits_test[np.array([0, 300])]
  with pytest.raises(TypeError, match="1-D integer array"):
    digits_test[3]


def test_check_batch(digits_test):
  batch = digits_test[np.arange(4)]
  data.check_batch(batch, (8, 8, 1))
  with pytest.raises(ValueError, match=r"shape \[B, 16, 16, 1\]"):
    data.check_batch(batch, (16, 16, 1))
  bad = dict(batch, image=batch["image"].copy())
  bad["image"][1, 2, 3, 0] = np.nan
  with pytest.raises(ValueError, match="1 non-finite"):
    data.check_batch(bad, (8, 8, 1))
  with pytest.raises(TypeError, match="float32"):
    data.check_batch(dict(batch, image=(batch["image"] > 0).astype(np.uint8)), (8, 8, 1))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    data.check_batch(dict(batch, image=batch["image"] * 2), (8, 8, 1))
  with pytest.raises(TypeError, match="integer"):
    data.check_batch(dict(batch, label=batch["label"].astype(np.float32)), (8, 8, 1))


def test_shard_batch_splits_loader_batch_over_8_devices(shapes_train):
  mesh = make_mesh()
  assert mesh.shape["data"] == 8
  batch = next(data.Loader(shapes_train, 16, seed=0, shard_index=0, num_shards=1))
  sharded = shard_batch(batch, mesh)
  for k, v in sharded.items():
    assert v.sharding.spec == P("data"), k
    assert {s.data.shape[0] for s in v.addressable_shards} == {2}
    np.testing.assert_array_equal(np.asarray(v), batch[k])
  assert len(sharded["image"].sharding.device_set) == 8 == len(jax.devices())


# ---------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_shapes_range_and_uint8_mapping(name, shape):
  with _mock_tfds(6):
    src = data.get_source(name, "train")
    raw = tfds.data_source(name, split="train")
    assert len(src) == 6 and src.image_shape == shape and src.num_classes == 10
    batch = src[np.arange(6)]
    assert batch["image"].shape == (6, *shape) and batch["image"].dtype == np.float32
    want = np.stack([raw[i]["image"] for i in range(6)]).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(batch["image"], want, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], [raw[i]["label"] for i in range(6)])
    assert batch["label"].dtype == np.int32
    data.check_batch(batch, shape)
    resized = data.get_source(name, "test", image_size=16)[np.arange(2)]
    assert resized["image"].shape == (2, 16, 16, shape[2])
    loader = data.Loader(src, 3, seed=0, shard_index=0, num_shards=1, num_epochs=1)
    assert sorted(np.concatenate([b["index"] for b in loader])) == list(range(6))


def test_tfds_mock_celeb_a_crop_resize_and_attributes():
  with _mock_tfds(3):
    src = data.get_source("celeb_a", "validation")
    assert src.image_shape == (64, 64, 3) and src.num_classes is None
    batch = src[np.arange(3)]
    assert "label" not in batch and batch["Smiling"].dtype == np.int32
    assert set(batch) == {"image", "index", *src.attributes}
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    smiling = data.TfdsSource("celeb_a", "train", image_size=32, label_attribute="Smiling")
    b = smiling[np.arange(3)]
    assert b["image"].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(b["label"], b["Smiling"])


def test_tfds_not_prepared_error_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared") as err:
    data.get_source("mnist", "train", data_dir=str(tmp_path))
  msg = str(err.value)
  assert "download_and_prepare(file_format='array_record')" in msg
  assert "jaxgen[tf]" in msg and str(tmp_path) in msg


def test_unknown_dataset_and_split():
  with pytest.raises(ValueError, match="unknown dataset 'mnsit'.*'digits', 'shapes', 'mnist'"):
    data.get_source("mnsit", "train")
  with pytest.raises(ValueError, match="unknown split 'val'.*'train', 'test'"):
    data.get_source("cifar10", "val")
  with pytest.raises(ValueError, match="unknown split"):
    data.get_source("digits", "validation")
  assert set(data.DATASETS) >= {"digits", "shapes", "mnist", "fashion_mnist", "cifar10",
                                "celeb_a"}
