#!/usr/bin/env python3
"""A Modbus device simulator for tollgate's tests, on pymodbus 3.x (the independent peer).

Usage: modbus_sim.py SPEC.json (tcp PORT | rtu DEVICE | rtu-timing DEVICE) LOGFILE CONTROL_DIR

SPEC: {"devices": {"<unit>": {"co": {"<address>": [bools]}, "di": {...},
                             "hr": {"<address>": [u16 values]}, "ir": {...}}}}
Each address key starts a block of consecutive values; addresses outside every block are
answered with exception 0x02 (illegal data address), as a real device does.

LOGFILE gets one JSON line per request received: {"unit", "fc", "address", "count"}.
CONTROL_DIR holds files the test writes to steer the device while it runs:
  mute     unit ids (one per line) that do not answer (a dead slave on the bus)
  corrupt  a number N: the next N replies get a damaged last byte (CRC error on RTU)
  delay    "MS N": the next N replies are sent MS milliseconds late (the whole device
           stalls meanwhile, as a busy slave does)
Prints "ready" on stdout once serving.

rtu-timing: not pymodbus but a bare RTU responder (read functions 1-4, holding and input
registers from "hr"/"ir", bits from "co"/"di") that timestamps bytes as they arrive, for
the inter-frame silence: each log line also has "rx" (monotonic seconds when the read
that brought the request's first byte returned) and "tx" (when its reply was written).
pymodbus's own framer waits for the end of a frame before tracing, so its times would
hide how soon the master sent.
"""

import asyncio
import json
import os
import sys
import time

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

spec_path, mode, where, log_path, control = sys.argv[1:6]
spec = json.load(open(spec_path))
log = open(log_path, "a", buffering=1)


def muted():
    try:
        with open(os.path.join(control, "mute")) as f:
            return {int(x) for x in f.read().split()}
    except FileNotFoundError:
        return set()


def take_corrupt():
    path = os.path.join(control, "corrupt")
    try:
        with open(path) as f:
            n = int(f.read().strip() or 0)
    except FileNotFoundError:
        return False
    if n <= 0:
        return False
    with open(path, "w") as f:
        f.write(str(n - 1))
    return True


def take_delay():
    path = os.path.join(control, "delay")
    try:
        with open(path) as f:
            ms, n = (int(x) for x in f.read().split())
    except (FileNotFoundError, ValueError):
        return 0
    if n <= 0:
        return 0
    with open(path, "w") as f:
        f.write(f"{ms} {n - 1}")
    return ms


def blocks(table, kind):
    out = []
    for address, values in sorted(table.get(kind, {}).items(), key=lambda kv: int(kv[0])):
        if kind in ("co", "di"):
            out.append(SimData(int(address), values=[bool(v) for v in values], datatype=DataType.BITS))
        else:
            out.append(SimData(int(address), values=[int(v) for v in values], datatype=DataType.REGISTERS))
    if not out:
        # pymodbus wants every table non-empty: one value far away from the tests' addresses.
        value = [False] if kind in ("co", "di") else [0]
        out.append(SimData(65000, values=value, datatype=DataType.BITS if kind in ("co", "di") else DataType.REGISTERS))
    return out


devices = []
for unit, table in spec["devices"].items():
    simdata = (blocks(table, "co"), blocks(table, "di"), blocks(table, "hr"), blocks(table, "ir"))
    devices.append(SimDevice(int(unit), simdata=simdata))


def trace_pdu(sending, pdu):
    if not sending:
        entry = {"unit": pdu.dev_id, "fc": pdu.function_code,
                 "address": getattr(pdu, "address", None), "count": getattr(pdu, "count", None)}
        log.write(json.dumps(entry) + "\n")
    return pdu


def trace_packet(sending, data):
    if not sending or not data:
        return data
    unit = data[0] if mode == "rtu" else data[6]
    if unit in muted():
        return b""
    late = take_delay()
    if late:
        time.sleep(late / 1000)
    if take_corrupt():
        return data[:-1] + bytes([data[-1] ^ 0xFF])
    return data


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def table_values(unit, fc, address, count):
    kind = {1: "co", 2: "di", 3: "hr", 4: "ir"}[fc]
    values = {}
    for start, block in spec["devices"].get(str(unit), {}).get(kind, {}).items():
        for i, v in enumerate(block):
            values[int(start) + i] = int(v)
    return [values.get(address + i, 0) for i in range(count)]


def serve_rtu_timing():
    fd = os.open(where, os.O_RDWR | os.O_NOCTTY)
    print("ready", flush=True)
    buf, first = b"", None
    while True:
        data = os.read(fd, 256)
        now = time.monotonic()
        if not data:
            return
        if not buf:
            first = now
        buf += data
        while len(buf) >= 8:
            frame, buf = buf[:8], buf[8:]
            unit, fc = frame[0], frame[1]
            address, count = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
            entry = {"unit": unit, "fc": fc, "address": address, "count": count, "rx": first}
            first = now if buf else None
            if crc16(frame[:6]) != int.from_bytes(frame[6:8], "little") or fc not in (1, 2, 3, 4):
                entry["bad"] = True
                log.write(json.dumps(entry) + "\n")
                buf = b""
                continue
            values = table_values(unit, fc, address, count)
            if fc in (1, 2):
                data = bytearray((count + 7) // 8)
                for i, v in enumerate(values):
                    if v:
                        data[i // 8] |= 1 << (i % 8)
                body = bytes([unit, fc, len(data)]) + bytes(data)
            else:
                body = bytes([unit, fc, 2 * count]) + b"".join(v.to_bytes(2, "big") for v in values)
            os.write(fd, body + crc16(body).to_bytes(2, "little"))
            entry["tx"] = time.monotonic()
            log.write(json.dumps(entry) + "\n")


async def main():
    if mode == "tcp":
        server = ModbusTcpServer(devices, address=("127.0.0.1", int(where)),
                                 ignore_missing_devices=True, trace_pdu=trace_pdu, trace_packet=trace_packet)
    else:
        server = ModbusSerialServer(devices, port=where, baudrate=19200, parity="N",
                                    ignore_missing_devices=True, trace_pdu=trace_pdu,
                                    trace_packet=trace_packet)
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    await task


if mode == "rtu-timing":
    serve_rtu_timing()
else:
    asyncio.run(main())
