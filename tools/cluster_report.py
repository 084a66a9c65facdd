"""The report of `make cluster-check`: one line per check, printed as it is decided, and never a
secret: every text goes through `Report.redact` (the admin key, each API key issued, and anything
shaped like a MaaS key are replaced) before it is printed or put in the JSON report."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import IO, Literal

Status = Literal["ok", "FAIL", "warn", "skip"]
# Anything that looks like one of our keys (API keys `maas_...`, admin keys `maas_admin_...`).
_KEY_SHAPE = re.compile(r"maas_[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"


@dataclass
class Result:
    section: str
    name: str
    status: Status
    detail: str
    fix: str = ""
    seconds: float | None = None


@dataclass
class Report:
    json_mode: bool = False
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    results: list[Result] = field(default_factory=list)
    _secrets: list[str] = field(default_factory=list)
    _section: str | None = None

    def secret(self, value: str | None) -> None:
        """Never print `value` (nor put it in the JSON report)."""
        if value and value not in self._secrets:
            self._secrets.append(value)

    def redact(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, REDACTED)
        return _KEY_SHAPE.sub(REDACTED, text)

    def heading(self, text: str) -> None:
        if not self.json_mode:
            print(self.redact(text), file=self.out, flush=True)

    def add(
        self, section: str, name: str, status: Status, detail: str, fix: str = "", seconds: float | None = None
    ) -> Result:
        result = Result(section, self.redact(name), status, self.redact(detail), self.redact(fix),
                        None if seconds is None else round(seconds, 2))
        self.results.append(result)
        if not self.json_mode:
            if section != self._section:
                print(section, file=self.out)
                self._section = section
            timing = "" if result.seconds is None else f"  ({result.seconds:.2f} s)"
            print(f"  {status:<4}  {result.name}: {result.detail}{timing}", file=self.out)
            if result.fix and status in ("FAIL", "warn"):
                print(f"        fix: {result.fix}", file=self.out)
            self.out.flush()
        return result

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "warn": 0, "FAIL": 0, "skip": 0}
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def exit_code(self) -> int:
        return 1 if any(r.status == "FAIL" for r in self.results) else 0

    def finish(self, context: dict[str, str]) -> int:
        counts = self.counts()
        if self.json_mode:
            document = {
                "ok": self.exit_code == 0,
                "exit_code": self.exit_code,
                "context": context,
                "summary": counts,
                "checks": [asdict(r) for r in self.results],
            }
            print(self.redact(json.dumps(document, indent=2)), file=self.out)
        else:
            verdict = "all checks passed" if self.exit_code == 0 else "some checks FAILED (see the fix lines above)"
            print(
                f"{counts['ok']} ok, {counts['warn']} warn, {counts['FAIL']} FAIL, {counts['skip']} skipped: {verdict}",
                file=self.out,
            )
        self.out.flush()
        return self.exit_code
