"""Invertible per-level maps ``x -> u``. Each variant registers in ``TRANSPORTERS``."""

from ntm.transporters.base import TRANSPORTERS, Transporter, TransporterConfig
from ntm.transporters.identity import IdentityConfig, IdentityTransporter
from ntm.transporters.spline_tarflow import SplineTarFlow, SplineTarFlowConfig
from ntm.transporters.tarflow import TarFlow, TarFlowConfig

__all__ = [
    "TRANSPORTERS", "IdentityConfig", "IdentityTransporter", "SplineTarFlow", "SplineTarFlowConfig", "TarFlow",
    "TarFlowConfig", "Transporter", "TransporterConfig",
]
