"""is_dos dataset: IS-DOS of unrelaxed structures with relaxed formation energies (TFDS).

Installed as `esnet_tf.datasets.is_dos`. The builder registers itself when its module
(`is_dos_dataset_builder`) is imported, which `import esnet_tf.datasets` does. This file imports
nothing, so that `tfds build datasets/is_dos` from a checkout (which imports the builder as
`is_dos.is_dos_dataset_builder`) registers `is_dos` once.
"""
