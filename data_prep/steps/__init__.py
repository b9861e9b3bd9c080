"""The shared, resumable steps every dataset is built from: fetch and unpack sources, tokenize and clean text, learn
and apply BPE, binarize with fairseq, and the runner that records each step's inputs and outputs in manifest.json."""
