#!/usr/bin/env python3
"""A Modbus device simulator for tollgate's tests, on pymodbus 3.x (the independent peer).

Usage: modbus_sim.py SPEC.json (tcp PORT | rtu DEVICE) LOGFILE CONTROL_DIR

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


asyncio.run(main())
