"""The tumour segmenter: whole-tumour masks per axial slice, trained with ``task=segment``."""
