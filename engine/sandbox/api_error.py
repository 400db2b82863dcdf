"""The sandbox's HTTP error answer (``ApiError``), shared by the ERP API and the billing
receiver's FHIR ChargeItem endpoint (so neither imports the other for it)."""

from __future__ import annotations

__all__ = ["ApiError", "invalid"]


class ApiError(Exception):
    """An answer other than success: status and a message (naming the field for 422)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def invalid(field_name: str, problem: str) -> ApiError:
    """A 422 naming the field and what is wrong with it."""
    return ApiError(422, f"{field_name}: {problem}")
