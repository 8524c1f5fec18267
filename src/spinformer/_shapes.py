"""Sizes read off a tensor attribute's shape, declared once per attribute."""

from __future__ import annotations

from typing import Any, overload

__all__ = ["AxisLength"]


class AxisLength:
    """A read-only ``int`` attribute: the length of axis ``axis`` of the tensor attribute ``tensor``.

    >>> import torch
    >>> class Patterns:
    ...     count = AxisLength("rows", 0, "P, the number of rows.")
    ...     def __init__(self, rows):
    ...         self.rows = rows
    >>> Patterns(torch.zeros(3, 5)).count
    3
    """

    def __init__(self, tensor: str, axis: int, doc: str) -> None:
        self.tensor = tensor
        self.axis = axis
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> AxisLength: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> int: ...
    def __get__(self, obj: Any, owner: type | None = None) -> int | AxisLength:
        if obj is None:
            return self
        return int(getattr(obj, self.tensor).shape[self.axis])

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError(
            f"{self.name} is read-only (the length of axis {self.axis} of {self.tensor})"
        )
