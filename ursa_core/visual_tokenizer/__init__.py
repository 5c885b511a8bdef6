"""URSA visual tokenizers: Cosmos DV 4x8x8 FSQ (video) and IBQ (image), behind one interface."""
from .cosmos import CosmosFSQTokenizer
from .fsq import FSQ_LEVELS, code_table, dequantize, quantize
from .ibq import IBQTokenizer
from .loading import fsq_table_matches, load_visual_tokenizer, write_tiny_visual_tokenizer
from .tiling import VisualTokenizer, decode_fitting

__all__ = [
    "CosmosFSQTokenizer", "IBQTokenizer", "VisualTokenizer", "FSQ_LEVELS", "code_table", "dequantize", "quantize",
    "decode_fitting", "fsq_table_matches", "load_visual_tokenizer", "write_tiny_visual_tokenizer",
]
