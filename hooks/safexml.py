"""XML from untrusted hands, parsed safely: pyexpat with every DTD feature refused.

No DOCTYPE and no entity declarations (so no entity expansion and no external fetches), a byte
limit, a nesting limit and an element limit; it keeps only tags, attributes and text. Used for
the domain XML libvirt pipes to the qemu hook and for the methodCall xapi hands the dom0 plugin.
ElementTree is not used: it imports ``re`` and more (the qemu hook's latency budget, see
docs/kvm.md) and offers nothing needed here.
"""

import pyexpat as expat  # what xml.parsers.expat re-exports, without its two package imports

MAX_DEPTH = 32
MAX_ELEMENTS = 100_000


class XmlError(ValueError):
    """The XML is malformed, hostile or too large: the message says which and where."""


class Element:
    """A parsed element: namespace-qualified tag (``{ns}name`` or ``name``), attributes, children."""

    __slots__ = ("tag", "attrs", "children", "text")

    def __init__(self, tag: str, attrs: "dict[str, str]") -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: "list[Element]" = []
        self.text = ""

    def find(self, tag: str) -> "Element | None":
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findall(self, tag: str) -> "list[Element]":
        return [c for c in self.children if c.tag == tag]

    def path(self, *tags: str) -> "Element | None":
        node: "Element | None" = self
        for tag in tags:
            node = node.find(tag) if node is not None else None
        return node


def parse(data: bytes, *, limit: int, what: str = "XML", error: "type[XmlError]" = XmlError) -> "Element":
    """Parse XML bytes into Elements; ``error`` (naming ``what``) on anything malformed or hostile."""
    if len(data) > limit:
        raise error(f"{what} is {len(data)} bytes, more than the {limit}-byte limit")
    if not data.strip():
        raise error(f"{what} is empty")
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: "list[Element]" = []
    root: "list[Element]" = []
    count = [0]

    def refuse_dtd(*_args: object) -> None:
        raise error(f"DOCTYPE/entity declarations are refused (line {parser.CurrentLineNumber})")

    def start(name: str, attrs: "dict[str, str]") -> None:
        count[0] += 1
        if len(stack) >= MAX_DEPTH or count[0] > MAX_ELEMENTS:
            raise error(f"{what} nests deeper than {MAX_DEPTH} or has over {MAX_ELEMENTS} elements")
        el = Element("{" + name if "}" in name else name, attrs)
        if stack:
            stack[-1].children.append(el)
        else:
            root.append(el)
        stack.append(el)

    def end(_name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack and len(stack[-1].text) < 4096:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.UnparsedEntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd  # type: ignore[assignment]  # it raises
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise error(f"malformed {what}: {exc}") from None
    except RecursionError:
        raise error(f"{what} nests too deeply") from None
    return root[0]
