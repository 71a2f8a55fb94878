#!/usr/bin/env python3
"""Parses `seb audit report --format html` with Python's HTML parser (html.parser, the
standard library's HTML5 tokenizer) and prints what a test checks, as JSON:

  {"points": {"SERIES": [{"bucket", "rate", "cx", "cy"}...]}, "polylines": {...},
   "external": [...], "scripts": N, "unclosed": [...], "stray_end_tags": [...], "title": ...}

`external` lists every src/href/xlink:href that points anywhere (a self-contained page has
none); `unclosed` and `stray_end_tags` catch markup whose elements do not nest.

Usage: parse_report_html.py FILE
"""
import json
import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}


class Report(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.series = None
        self.points = {}
        self.polylines = {}
        self.external = []
        self.scripts = 0
        self.stray = []
        self.title = ""
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "xlink:href"):
            if k in a:
                self.external.append(a[k])
        if tag == "script":
            self.scripts += 1
        if tag == "title" and not self.stack[-1:] == ["circle"]:
            self.in_title = "svg" not in self.stack
        if tag == "g" and "data-series" in a:
            self.series = a["data-series"]
            self.points[self.series] = []
        if tag == "polyline" and self.series:
            self.polylines[self.series] = a.get("points", "")
        if tag == "circle" and self.series:
            rate = a.get("data-rate", "")
            self.points[self.series].append({
                "bucket": a.get("data-bucket"),
                "rate": float(rate) if rate else None,
                "cx": float(a["cx"]),
                "cy": float(a["cy"]),
            })
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        # <polyline .../> in SVG: a start tag that closes itself.
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag == "g":
            self.series = None
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.stray.append(tag)

    def handle_data(self, data):
        if self.in_title:
            self.title += data


def main():
    p = Report()
    with open(sys.argv[1], encoding="utf-8") as f:
        p.feed(f.read())
    p.close()
    print(json.dumps({
        "points": p.points,
        "polylines": p.polylines,
        "external": p.external,
        "scripts": p.scripts,
        "unclosed": p.stack,
        "stray_end_tags": p.stray,
        "title": p.title,
    }))


if __name__ == "__main__":
    main()
