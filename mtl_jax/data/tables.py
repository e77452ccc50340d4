"""The small tables some sources ship beside their images: split lists, CSV, .xlsx.

Plain readers with no project logic; builders and predict's batch CSV use them.
"""

from __future__ import annotations

import csv
import re
import zipfile
from xml.etree import ElementTree


def read_list(path) -> list:
  """Non-empty, stripped lines of a split list."""
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def read_csv(path) -> list:
  with open(path, newline='', encoding='utf-8-sig') as f:
    return list(csv.DictReader(f))


def read_xlsx_columns(path, columns) -> list:
  """Rows of the first sheet of an .xlsx as dicts of the named header columns
  (stdlib only: no openpyxl)."""
  ns = {'m': 'http://schemas.openxmlformats.org/spreadsheetml/2006/main'}
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    strings = []
    if 'xl/sharedStrings.xml' in names:
      root = ElementTree.fromstring(z.read('xl/sharedStrings.xml'))
      strings = [''.join(t.text or '' for t in si.iter(f'{{{ns["m"]}}}t'))
                 for si in root.findall('m:si', ns)]
    sheet = ElementTree.fromstring(z.read('xl/worksheets/sheet1.xml'))
  rows = []
  for row in sheet.iter(f'{{{ns["m"]}}}row'):
    cells = {}
    for cell in row.findall('m:c', ns):
      value = cell.find('m:v', ns)
      if value is not None:
        col = re.match(r'[A-Z]+', cell.get('r')).group()
        cells[col] = strings[int(value.text)] if cell.get('t') == 's' else value.text
    rows.append(cells)
  if not rows:
    return []
  header = {v: k for k, v in rows[0].items()}
  return [{c: r.get(header.get(c), '') for c in columns} for r in rows[1:]]
