"""Assembling the scheduler from settings: the capacity model, the picking policy and the admission."""

from __future__ import annotations

from noor.settings import Settings
from router.admission import Admission
from router.admission.direct import DirectAdmission
from router.admission.fair import FairAdmission
from router.capacity import Capacity
from router.picking import make_policy


def build_capacity(settings: Settings) -> Capacity:
    s = settings.scheduler
    return Capacity(
        window=s.window_per_endpoint or settings.local.max_num_seqs,
        kv_threshold=s.kv_cache_threshold,
        stale_after_s=s.stale_after_intervals * settings.engine.metrics_interval_s,
    )


def build_admission(settings: Settings) -> Admission:
    """Fair queueing admission when enabled, else direct placement; both pick with the configured policy."""
    s = settings.scheduler
    capacity = build_capacity(settings)
    policy = make_policy(s.policy, s, capacity)
    if not s.admission_enabled:
        return DirectAdmission(policy)
    return FairAdmission(
        policy, capacity, deadline_s=s.queue_deadline_s, priorities=s.priority_classes,
        input_weight=s.vtc_input_weight, output_weight=s.vtc_output_weight, output_estimate=s.output_estimate_tokens,
        max_starting=s.max_starting_per_endpoint, headroom=s.headroom_per_endpoint,
    )
