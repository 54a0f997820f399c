"""Endpoint scorers, one per file, behind the small interface in ``base.py``; ``WeightedPicker`` combines them."""

from router.picking.scorers.base import VETO, Scorer
from router.picking.scorers.kv_cache import KVCacheScorer
from router.picking.scorers.load import LoadScorer
from router.picking.scorers.prefix import PrefixAffinityScorer

__all__ = ["VETO", "KVCacheScorer", "LoadScorer", "PrefixAffinityScorer", "Scorer"]
