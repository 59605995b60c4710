"""Shipped SavedModels (TF Serving layout `NAME/VERSION/`); installed as `esnet_tf.saved_models`.

Only data lives here: see README.md for the layout. Load a shipped model by name with
`esnet_tf.load_model(NAME)`.
"""
