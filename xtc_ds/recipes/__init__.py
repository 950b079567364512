"""Applications built on the xtc_ds library; the library core never imports from here."""
