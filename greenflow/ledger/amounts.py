"""Amounts of a token: integer quantities in the token's smallest unit, never floats.

``Amount(150_000, "GBP")`` is 1,500.00 pounds: the quantity counts pence, so sums and
splits are exact and every node computes the same figures. Arithmetic and comparison
work only between amounts of the same token (pounds never add to dollars, nor Bank A's
pounds to Bank B's), and a quantity is never negative, as in Corda.

A token is any hashable value that can cross the wire: an ISO 4217 currency code (a
``str``), an `Issued` product (what an issuer owes: ``Issued(bank, "GBP")``), or an app's
own ``@serializable`` frozen dataclass (with ``fraction_digits`` if it has minor units).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Iterable, Optional, TypeVar

from greenflow.party import Party
from greenflow.wire import register_wire_type

__all__ = ["Amount", "Issued", "TokenMismatch", "dollars", "euros", "fraction_digits", "pounds",
           "swiss_francs"]

T = TypeVar("T")
P = TypeVar("P")

# Minor units of the currencies apps use most (ISO 4217); others default to 2.
_CURRENCY_DIGITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3,
                    "OMR": 3, "JOD": 3, "TND": 3}


class TokenMismatch(ValueError):
    """Two amounts of different tokens were added, subtracted or compared."""


def fraction_digits(token: Any) -> int:
    """How many decimal places the token's smallest unit is (GBP: 2, JPY: 0)."""
    if isinstance(token, str):
        return _CURRENCY_DIGITS.get(token, 2)
    if isinstance(token, Issued):
        return fraction_digits(token.product)
    digits = getattr(token, "fraction_digits", 0)
    return digits if type(digits) is int else 0


@dataclass(frozen=True)
class Issued(Generic[P]):
    """``product`` as owed by ``issuer``: cash is a claim on the bank that issued it, so
    pounds issued by two banks are two tokens. ``reference`` tells apart issuances by the
    same issuer (an account, a deposit) when the issuer needs to."""

    issuer: Party
    product: P
    reference: bytes = b""

    def __str__(self) -> str:
        ref = f"[{self.reference.hex()}]" if self.reference else ""
        return f"{self.product} issued by {self.issuer.short_name}{ref}"


@dataclass(frozen=True)
class Amount(Generic[T]):
    """``quantity`` of ``token``'s smallest unit (an int >= 0)."""

    quantity: int
    token: T

    def __post_init__(self) -> None:
        if type(self.quantity) is not int:
            raise TypeError(f"an Amount's quantity is an int of the token's smallest unit, not "
                            f"{type(self.quantity).__name__} (use Amount.from_decimal for decimals)")
        if self.quantity < 0:
            raise ValueError(f"an Amount cannot be negative: {self.quantity} of {self.token}")

    # ---------------------------------------------------------------- making amounts
    @classmethod
    def from_decimal(cls, value: Decimal | int | str, token: T) -> "Amount[T]":
        """``value`` in whole units (``Decimal("10.50")``, ``"10.50"`` or ``10``) of
        ``token``; more decimal places than the token has is an error, as is a float."""
        if isinstance(value, float) or isinstance(value, bool):
            raise TypeError(f"amounts are never floats: give {value!r} as a Decimal or a string")
        try:
            dec = Decimal(value.replace(",", "") if isinstance(value, str) else value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
        scaled = dec.scaleb(fraction_digits(token))
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value} {token} has more decimal places than {token} allows "
                             f"({fraction_digits(token)})")
        return cls(int(scaled), token)

    @classmethod
    def parse(cls, text: str) -> "Amount[str]":
        """``"1,500.00 GBP"`` or ``"GBP 1500"``: a currency amount as people write it."""
        parts = str(text).split()
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not an amount such as '1500.00 GBP'")
        a, b = parts
        number, code = (a, b) if a[:1].isdigit() or a[:1] in "-." else (b, a)
        if not (code.isalpha() and code.isupper()):
            raise ValueError(f"{text!r}: {code!r} is not a currency code such as GBP")
        return cls.from_decimal(number, code)  # type: ignore[return-value]

    parse_arg = parse  # how the CLI and RPC turn an argument's text into an Amount
    ARG_EXAMPLE = "'1500.00 GBP'"

    @classmethod
    def zero(cls, token: T) -> "Amount[T]":
        return cls(0, token)

    @staticmethod
    def sum_or_throw(amounts: Iterable["Amount[T]"]) -> "Amount[T]":
        """The sum of at least one amount, all of one token."""
        total: Optional[Amount[T]] = None
        for a in amounts:
            total = a if total is None else total + a
        if total is None:
            raise ValueError("the sum of no amounts has no token")
        return total

    @staticmethod
    def sum_or_zero(amounts: Iterable["Amount[T]"], token: T) -> "Amount[T]":
        total = Amount(0, token)
        for a in amounts:
            total = total + a
        return total

    # ---------------------------------------------------------------- arithmetic
    def _check(self, other: Any, op: str) -> "Amount[T]":
        if not isinstance(other, Amount):
            raise TypeError(f"cannot {op} an Amount and a {type(other).__name__}")
        if other.token != self.token:
            raise TokenMismatch(f"cannot {op} {self} and {other}: different tokens")
        return other

    def __add__(self, other: "Amount[T]") -> "Amount[T]":
        return Amount(self.quantity + self._check(other, "add").quantity, self.token)

    def __sub__(self, other: "Amount[T]") -> "Amount[T]":
        q = self.quantity - self._check(other, "subtract").quantity
        if q < 0:
            raise ValueError(f"{self} minus {other} is negative")
        return Amount(q, self.token)

    def __mul__(self, n: int) -> "Amount[T]":
        if type(n) is not int:
            raise TypeError(f"an Amount is multiplied by an int, not {type(n).__name__}")
        return Amount(self.quantity * n, self.token)

    __rmul__ = __mul__

    def split_evenly(self, parts: int) -> list["Amount[T]"]:
        """``parts`` amounts adding up to this one (the remainder goes to the first)."""
        if type(parts) is not int or parts < 1:
            raise ValueError("split into at least one part")
        each, rest = divmod(self.quantity, parts)
        return [Amount(each + (1 if i < rest else 0), self.token) for i in range(parts)]

    def __lt__(self, other: "Amount[T]") -> bool:
        return self.quantity < self._check(other, "compare").quantity

    def __le__(self, other: "Amount[T]") -> bool:
        return self.quantity <= self._check(other, "compare").quantity

    def __gt__(self, other: "Amount[T]") -> bool:
        return self.quantity > self._check(other, "compare").quantity

    def __ge__(self, other: "Amount[T]") -> bool:
        return self.quantity >= self._check(other, "compare").quantity

    def __bool__(self) -> bool:
        return self.quantity != 0

    # ---------------------------------------------------------------- tokens
    def issued_by(self, issuer: Party, reference: bytes = b"") -> "Amount[Issued[T]]":
        return Amount(self.quantity, Issued(issuer, self.token, reference))

    def without_issuer(self) -> "Amount[Any]":
        """The same quantity of the product an `Issued` token stands for."""
        token = self.token
        return Amount(self.quantity, token.product) if isinstance(token, Issued) else self

    def to_decimal(self) -> Decimal:
        """The quantity in whole units of the token (exact)."""
        return Decimal(self.quantity).scaleb(-fraction_digits(self.token))

    @property
    def display_token_size(self) -> Decimal:
        """The value of one unit of quantity, in whole tokens (GBP: 0.01)."""
        return Decimal(1).scaleb(-fraction_digits(self.token))

    def __str__(self) -> str:
        digits = fraction_digits(self.token)
        return f"{self.to_decimal():,.{digits}f} {self.token}"

    def __repr__(self) -> str:
        return f"Amount({self.quantity}, {self.token!r})"


def pounds(value: Decimal | int | str) -> Amount[str]:
    """``value`` pounds sterling (``pounds(10)`` is 1,000 pence)."""
    return Amount.from_decimal(value, "GBP")


def dollars(value: Decimal | int | str) -> Amount[str]:
    return Amount.from_decimal(value, "USD")


def euros(value: Decimal | int | str) -> Amount[str]:
    return Amount.from_decimal(value, "EUR")


def swiss_francs(value: Decimal | int | str) -> Amount[str]:
    return Amount.from_decimal(value, "CHF")


register_wire_type(Issued)
register_wire_type(Amount)
