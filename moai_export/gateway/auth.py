"""Bearer API keys, compared in constant time. No key material is ever logged or echoed."""

from __future__ import annotations

import hmac

from .errors import ApiError


class KeyChecker:
    def __init__(self, keys: tuple[str, ...]):
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, authorization: str | None) -> bool:
        try:
            self.check(authorization)
        except ApiError:
            return False
        return True

    def check(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer KEY'.", code="invalid_api_key")
        given = token.strip().encode("utf-8")
        # every key is compared (no early exit), each in constant time
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
