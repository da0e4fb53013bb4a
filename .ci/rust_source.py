"""Shared by `fn-lengths` and `import-cycles`: a Rust file with comments,
strings and `#[cfg(test)]` items blanked out (lines kept), and which files are
test code."""

import re
from pathlib import Path


def raw_string_start(text: str, i: int):
    """`r"`, `r#"`, `br#"`… starting a token at `i`."""
    if text[i] not in "rb" or (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
        return None
    return re.match(r'b?r(#*)"', text[i:i + 40])


def blank(text: str) -> str:
    """Comments and string/char literals replaced by spaces (newlines kept),
    so braces and paths inside them do not count."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif (m := raw_string_start(text, i)) is not None:
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def close_of(code: str, open_at: int) -> int:
    """Index of the brace closing the one at `open_at`."""
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def drop_cfg_test(code: str) -> str:
    """`#[cfg(test)]` items (inline test modules, test-only functions)
    blanked out; `#[cfg(test)] mod x;` too."""
    for m in reversed(list(re.finditer(r"#\[cfg\(test\)\]", code))):
        brace = code.find("{", m.end())
        semi = code.find(";", m.end())
        if semi >= 0 and (brace < 0 or semi < brace):
            end = semi
        else:
            end = close_of(code, brace)
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():end + 1]) + code[end + 1:]
    return code


TEST_NAMES = re.compile(r"(^|/)(tests?|testing|conformance|fake|pki|[a-z_]+_tests)(\.rs|/)")


def is_test_file(path: Path, root: Path) -> bool:
    """Test code and test support (declared under `#[cfg(test)]`, or only
    used by tests): `tests.rs`, `*_tests.rs`, `tests/`, `testing.rs`, the
    store's conformance suite, the datapath's fake, the test PKI."""
    return bool(TEST_NAMES.search(str(path.relative_to(root))))


def production_code(path: Path) -> str:
    return drop_cfg_test(blank(path.read_text()))
