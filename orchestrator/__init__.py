"""Split-point and rate orchestration for the edge client: estimators, policies, simulator.

Imports only ``splitserve.core`` and numpy. The edge client builds an :class:`Orchestrator` at start-up
from the bundle manifest and the latencies it measured on the device, calls :meth:`Orchestrator.decide`
before every request and :meth:`Orchestrator.observe` after it.
"""

from __future__ import annotations

from ._options import options_from_manifest as options_from_manifest
from ._orchestrator import Orchestrator as Orchestrator
from ._orchestrator import OrchestratorConfig as OrchestratorConfig
from .devices import DEVICE_CLASSES as DEVICE_CLASSES
from .devices import DeviceClass as DeviceClass
from .devices import device_class as device_class
from .policies import Choice as Choice
from .policies import DecisionState as DecisionState
from .policies import Policy as Policy
from .policies import create_policy as create_policy
from .policies import is_policy as is_policy
from .policies import list_policies as list_policies
from .policies import register_policy as register_policy
from .profile import Profile as Profile
from .profile import ProfileEntry as ProfileEntry
from .profile import example_profile_path as example_profile_path
from .simulate import Metrics as Metrics
from .simulate import Run as Run
from .simulate import SimConfig as SimConfig
from .simulate import Simulation as Simulation
from .traces import Trace as Trace
from .traces import trace_set as trace_set
from .types import Decider as Decider
from .types import DeviceLatency as DeviceLatency
from .types import Estimates as Estimates
from .types import Observation as Observation
from .types import Option as Option
from .types import ProbeResult as ProbeResult
from .types import ServerTimings as ServerTimings
from .types import SplitDecision as SplitDecision

__all__ = [
    "DEVICE_CLASSES",
    "Choice",
    "DecisionState",
    "Decider",
    "DeviceClass",
    "DeviceLatency",
    "Estimates",
    "Metrics",
    "Observation",
    "Option",
    "Orchestrator",
    "OrchestratorConfig",
    "Policy",
    "ProbeResult",
    "Profile",
    "ProfileEntry",
    "Run",
    "ServerTimings",
    "SimConfig",
    "Simulation",
    "SplitDecision",
    "Trace",
    "create_policy",
    "device_class",
    "example_profile_path",
    "is_policy",
    "list_policies",
    "options_from_manifest",
    "register_policy",
    "trace_set",
]
