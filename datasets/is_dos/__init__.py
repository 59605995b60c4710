"""is_dos dataset: IS-DOS of unrelaxed structures with relaxed formation energies (TFDS)."""
