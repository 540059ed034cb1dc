"""Output text for one request: incremental detokenisation for streaming, and OpenAI's stop semantics.

The engine ends a request on the token that completes a stop string, so its tokens still contain the
stop string; OpenAI returns the text *before* it. Streaming therefore holds back any tail that could
be the start of a stop string (and an incomplete multi-byte character), so the streamed pieces join
to exactly the non-streamed text.
"""

from __future__ import annotations

from typing import Sequence


class TextAssembler:
    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = ""  # text already handed out

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _cut_at_stop(self, text: str) -> str:
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(cuts)] if cuts else text

    def add(self, ids: Sequence[int]) -> str:
        """New tokens; returns the text that is now safe to send (maybe empty)."""
        self.ids.extend(ids)
        text = self._cut_at_stop(self._decode())
        safe = len(text)
        while safe > 0 and text[safe - 1] == "\ufffd":  # the rest of a multi-byte character is still to come
            safe -= 1
        for s in self.stop:  # a tail that may grow into a stop string
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - n : safe] == s[:n]:
                    safe -= n
                    break
        return self._advance(text[:safe])

    def finish(self) -> str:
        """The request ended: the rest of the text."""
        return self._advance(self.final_text())

    def final_text(self) -> str:
        return self._cut_at_stop(self._decode())

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
