"""Drives a Wyoming server with the reference Python client (PyPI `wyoming`), as Home
Assistant does, and prints one JSON object with what came back.

    client.py PORT describe
    client.py PORT transcribe FILE.wav
    client.py PORT synthesize TEXT OUT.wav
    client.py PORT detect FILE.wav
    client.py PORT handle TEXT
"""

import asyncio
import json
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection, NotDetected


async def send_wav(client, path, chunk_ms=100):
    with wave.open(path, "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        per = rate * chunk_ms // 1000
        while True:
            frames = w.readframes(per)
            if not frames:
                break
            await client.write_event(
                AudioChunk(rate=rate, width=width, channels=channels, audio=frames).event()
            )
        await client.write_event(AudioStop().event())


async def until(client, *kinds):
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout=60)
        if event is None:
            return None
        if Error.is_type(event.type):
            return event
        if any(k.is_type(event.type) for k in kinds):
            return event


async def main():
    port, what = int(sys.argv[1]), sys.argv[2]
    out = {}
    async with AsyncTcpClient("127.0.0.1", port) as client:
        if what == "describe":
            await client.write_event(Describe().event())
            info = Info.from_event(await until(client, Info))
            out = {
                "asr": [m.name for p in info.asr for m in p.models],
                "tts": [v.name for p in info.tts for v in p.voices],
                "wake": [m.phrase for p in info.wake for m in p.models],
                "handle": [m.name for p in info.handle for m in p.models],
            }
        elif what == "transcribe":
            await client.write_event(Transcribe(language="en").event())
            await send_wav(client, sys.argv[3])
            t0 = time.monotonic()
            event = await until(client, Transcript)
            out = {"type": event.type, "data": event.data, "ms": (time.monotonic() - t0) * 1000}
        elif what == "synthesize":
            await client.write_event(Synthesize(text=sys.argv[3]).event())
            chunks, start = [], None
            while True:
                event = await asyncio.wait_for(client.read_event(), timeout=60)
                if AudioStart.is_type(event.type):
                    start = AudioStart.from_event(event)
                elif AudioChunk.is_type(event.type):
                    chunks.append(AudioChunk.from_event(event).audio)
                elif AudioStop.is_type(event.type) or Error.is_type(event.type):
                    break
            audio = b"".join(chunks)
            with wave.open(sys.argv[4], "wb") as w:
                w.setnchannels(start.channels)
                w.setsampwidth(start.width)
                w.setframerate(start.rate)
                w.writeframes(audio)
            out = {"rate": start.rate, "chunks": len(chunks), "seconds": len(audio) / 2 / start.rate}
        elif what == "detect":
            await client.write_event(Detect(names=None).event())
            await send_wav(client, sys.argv[3])
            event = await until(client, Detection, NotDetected)
            out = {"type": event.type, "data": event.data}
        elif what == "handle":
            await client.write_event(Transcript(text=sys.argv[3]).event())
            event = await until(client, Handled, NotHandled)
            out = {"type": event.type, "data": event.data}
        else:
            raise SystemExit(f"unknown request {what}")
    print(json.dumps(out))


asyncio.run(main())
