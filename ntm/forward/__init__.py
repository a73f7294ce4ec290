"""Forward processes (Markov trajectories) and time schedules."""

from ntm.forward import interpolant
from ntm.forward.base import SCHEDULES, Schedule, ScheduleError, validate_times
from ntm.forward.process import FORWARD_PROCESSES, ForwardProcess, MarkovConfig, MarkovProcess
from ntm.forward.schedules import (
    ExplicitConfig,
    ExplicitSchedule,
    LengthShiftedConfig,
    LengthShiftedSchedule,
    ShiftedConfig,
    ShiftedSchedule,
    UniformConfig,
    UniformSchedule,
)

__all__ = [
    "FORWARD_PROCESSES", "SCHEDULES", "ExplicitConfig", "ExplicitSchedule", "ForwardProcess", "LengthShiftedConfig",
    "LengthShiftedSchedule", "MarkovConfig", "MarkovProcess", "Schedule", "ScheduleError", "ShiftedConfig", "ShiftedSchedule", "UniformConfig",
    "UniformSchedule", "interpolant", "validate_times",
]
