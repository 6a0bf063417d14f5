"""prepare -> dataset: a corpus file read (textfile), encoded into token files (prepare), read back (dataset);
how it writes dialogue (frames); how much of a text copies it (copymeter)."""
