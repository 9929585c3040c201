"""Caption data: COCO and the synthetic set, one tokeniser, the vocabulary, the prepared cache, the loader.

    tokenizer.tokenize          words for vocabulary building and BLEU
    vocab.Vocab                 PAD/SOS/EOS/UNK + words from training captions
    synthetic.generate_synthetic   seeded COCO-format shapes dataset (the default)
    coco.load_split / find_coco_files   COCO-format files through pycocotools
    prepare.prepare_dataset     decode once into a memory-mapped uint8 cache (public/private split)
    loader.PreparedData         fast normalised batches for training and decoding

Submodules are imported where used (torch is only needed by the loader).
"""
