"""Text that came from a host or a request, made safe to print on the operator's terminal.

A report's message is a host's command output; a pause reason, a job's step output, an API
refusal's `detail` are written by whoever holds a token or a host's secret. Printed raw, the
escape sequences in them drive the terminal of whoever runs `rollout`: clear the screen and draw
fake lines (CSI), set the window title or write the clipboard (OSC 0/2, OSC 52), ring the bell,
rub out text with backspaces or a carriage return, or reorder what the eye reads (bidi
overrides). `terminal_safe` is the one function every CLI output of such text goes through: each
character a terminal would act on instead of show is printed as a visible escape (`\\x1b`,
`\\u202e`), so the sequence is inert and the operator still sees that it was there. `--json`
output is safe as it is: `json.dumps` escapes every control and non-ASCII character.
"""

import unicodedata

# Unicode categories a terminal acts on or shows as nothing: controls (C0, DEL, C1, among them
# ESC, BEL, BS, CR and the single-character CSI/OSC/ST of C1), format characters (bidi embeddings,
# overrides and isolates, zero-width characters, the BOM), surrogates, line and paragraph
# separators.
_ACTED_ON = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Kept in multi-line text: a newline ends a line and a tab moves to the next stop, nothing else.
_LAYOUT = frozenset({"\n", "\t"})


def _visible(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str, *, multiline: bool = False) -> str:
    """`text` with every character a terminal would act on shown as a visible escape.

    One line unless `multiline`: then newlines and tabs stay (a CRLF ending is a newline, a lone
    CR is escaped: it would let a line overwrite itself).
    """
    if multiline:
        text = text.replace("\r\n", "\n")
    keep = _LAYOUT if multiline else frozenset()
    if text.isprintable() and not keep:
        return text  # the common case: nothing to look at character by character
    return "".join(
        _visible(c) if c not in keep and unicodedata.category(c) in _ACTED_ON else c for c in text
    )
