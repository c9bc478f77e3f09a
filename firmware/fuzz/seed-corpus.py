#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (corpus/<target>/) from the repository's fixtures.

Every target except otadata, partition_table and http_head reads its first byte as a seed
(how the input is cut into chunks); those seeds are prefixed here. Run from anywhere:
`python3 firmware/fuzz/seed-corpus.py`. Deterministic: the same fixtures give the same files.
"""
import hashlib
import pathlib
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent
FIX = ROOT / "fixtures"


def write(target, name, data):
    out = FUZZ / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(data)


def http_body(path):
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not body:
        head, _, body = raw.partition(b"\n\n")
    return head, body


def small_image(version=b"1.1.0", segments=2):
    """An ESP32-C3 app image: header, segments (the first holds esp_app_desc_t), checksum, SHA-256."""
    desc = bytearray(256)
    desc[0:4] = struct.pack("<I", 0xABCD5432)
    desc[16:16 + len(version)] = version
    desc[48:55] = b"fuzzapp"
    segs = [bytes(desc) + b"\x13\x37" * 8] + [bytes(range(i, i + 20)) for i in range(segments - 1)]
    header = bytearray(24)
    header[0] = 0xE9
    header[1] = len(segs)
    header[2], header[3] = 2, 0x2F
    header[4:8] = struct.pack("<I", 0x42000020)
    header[12:14] = struct.pack("<H", 5)
    header[23] = 1
    body = bytearray(header)
    checksum = 0xEF
    for i, s in enumerate(segs):
        body += struct.pack("<II", 0x3C000020 + i * 0x1000, len(s)) + s
        for b in s:
            checksum ^= b
    while (len(body) + 1) % 16:
        body.append(0)
    body.append(checksum)
    return bytes(body) + hashlib.sha256(body).digest()


# JSON tokenizer and release parser: GitHub's responses, small hand-made releases.
_, latest = http_body(FIX / "github/releases-latest.200.http")
release = (b'{"tag_name":"v1.2.0","draft":false,"prerelease":false,"assets":[{"name":"firmware.bin",'
           b'"size":4096,"id":7,"updated_at":"2026-01-01T00:00:00Z","digest":"sha256:'
           + b"ab" * 32 + b'","url":"https://api.github.com/repos/a/b/releases/assets/7",'
           b'"browser_download_url":"https://github.com/a/b/releases/download/v1.2.0/firmware.bin"}]}')
listing = b"[" + release.replace(b"v1.2.0", b"v1.3.0-rc.1").replace(b'"prerelease":false', b'"prerelease":true') + b"," + release + b"]"
for name, doc in [("latest", latest), ("release", release), ("list", listing)]:
    write("release_parser", name, b"\x05" + doc)
    write("json_tokenizer", name, b"\x03" + doc[:2048])
write("json_tokenizer", "escapes", b"\x01" + rb'{"k":"\u00e9\ud83d\ude00 \"q\"","e":[],"o":{},"n":[[-1.5e3,true,null]]}')

# conf.json: the example, with a BOM, and the flat MicroPython form.
conf = (ROOT / "conf.json").read_bytes()
write("config_parser", "example", b"\x02" + conf)
write("config_parser", "bom", b"\x09" + b"\xef\xbb\xbf" + conf)
write("config_parser", "micropython", b"\x04" + b'{"ssid": "casa", "password": "segredo", '
      b'"repositorio": "https://github.com/acme/thermostat", "broker": "10.0.0.2"}')
write("json_tokenizer", "conf", b"\x07" + conf)

# otadata: the first entry of each sector of every fixture, plus slot-count/slot/state bytes.
for f in sorted((FIX / "otadata").glob("*.bin")):
    raw = f.read_bytes()
    write("otadata", f.stem, raw[0:32] + raw[4096:4128] + b"\x01\x01\x00")

# Partition tables as esptool/espflash write them (the whole 0xC00 area).
for f in sorted((FIX / "partitions").glob("*.bin")):
    write("partition_table", f.stem, f.read_bytes())

# App images: small ones built here (the 76 KiB hello image would slow every execution).
write("app_image", "two-segments", b"\x00" + small_image())
write("app_image", "one-segment", b"\x80" + small_image(b"2.0", 1))

# Response heads: the header lines of GitHub's recorded responses, status byte first.
statuses = {"200": 0, "206": 1, "301": 2, "302": 3, "304": 4, "403": 5, "416": 6, "429": 7, "500": 8, "503": 9}
for f in sorted((FIX / "github").glob("*.http")):
    head, _ = http_body(f)
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    code = lines[0].split(b" ")[1].decode()
    write("http_head", f.stem, bytes([statuses.get(code, 0)]) + b"\n".join(lines[1:]))

# Trace lines: what the core prints on the serial console, as the simulator's scenario
# snapshots hold them (up to six lines of each event kind).
lines, per_event = [], {}
for f in sorted((ROOT / "sim/tests/snapshots").glob("*.snap")):
    for line in f.read_bytes().split(b"\n"):
        line = line.strip()
        if not line.startswith(b"OTA ") or line in lines:
            continue
        event = line.split(b" ")[2] if line.count(b" ") >= 2 else b""
        if per_event.get(event, 0) < 6:
            per_event[event] = per_event.get(event, 0) + 1
            lines.append(line)
for i, line in enumerate(lines):
    write("trace_line", f"line{i:03}", line)
