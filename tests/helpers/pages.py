"""report.html read back: its paragraphs, headings, tables and numbers (with their JSON keys)."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """The text of each paragraph, the headings, the per-patient table's header and rows, and
    every number's JSON key and exact value."""

    def __init__(self, text: str):
        super().__init__()
        self.paragraphs: list[str] = []
        self.headings: list[str] = []
        self.numbers: dict[str, str] = {}
        self.tables: list[list[list[str]]] = []
        self._open: list[str] = []
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-key" in attrs:
            self.numbers[attrs["data-key"]] = attrs["data-value"]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        if tag in ("p", "h1", "h2", "h3", "td", "th"):
            self._open.append(tag)
            self._text = []

    def handle_data(self, data):
        self._text.append(data)

    def handle_endtag(self, tag):
        if not self._open or self._open[-1] != tag:
            return
        self._open.pop()
        text = "".join(self._text)
        if tag == "p":
            self.paragraphs.append(text)
        elif tag in ("h1", "h2", "h3"):
            self.headings.append(text)
        else:
            self.tables[-1][-1].append(text)


def lookup(data, key: str):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def check_numbers(page: Page, data: dict) -> None:
    """Every number on the page is the JSON's, to the bit."""
    assert page.numbers
    for key, shown in page.numbers.items():
        value = lookup(data, key)
        assert (shown == "null" and value is None) or float(shown) == value, key
