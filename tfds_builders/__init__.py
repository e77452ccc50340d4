"""TFDS dataset builders (array_record; written and read without TensorFlow).

Build with `mtl-jax build-data NAME --data_dir DIR` (`tfds build` needs
TensorFlow); read with `tfds.builder_from_directory(...).as_data_source()`.
"""
