"""Stability screening (being split out of esnet_tf.screen)."""
