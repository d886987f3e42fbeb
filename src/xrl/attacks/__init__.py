"""Adversarial attacks on observations and return-under-attack evaluation (``xrl attack``)."""

from xrl.attacks.attacks import ATTACKS, Attack, get_attack, list_attacks

__all__ = ["ATTACKS", "Attack", "get_attack", "list_attacks"]
