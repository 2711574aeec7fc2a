"""Coverage-guided fuzzing with atheris (``make soak``): the OTLP decoders and the model loader.

    .venv/bin/python tests/reliability/fuzz.py TARGET [atheris/libFuzzer options] [CORPUS_DIR]

Targets: ``otlp_protobuf``, ``otlp_json``, ``model``. Each must answer any input with its own
error type (PayloadError, ModelError) or a result — any other exception is a crash and is reported
with the input that caused it. Seed corpora live in tests/reliability/corpus/TARGET.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from collector.decode import PayloadError, decode_request, parse_json, parse_protobuf
    from collector.service import read_model
    from processors.matching import CompiledModel
    from processors.model import ModelError, parse_model

MODEL = CompiledModel(read_model("otel-config/models/orders.yaml")[0])


def otlp_protobuf(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_request(parse_protobuf(data), MODEL)


def otlp_json(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_request(parse_json(data), MODEL)


def model(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    with contextlib.suppress(ModelError):
        parse_model(text, "fuzz.yaml")


TARGETS = {"otlp_protobuf": otlp_protobuf, "otlp_json": otlp_json, "model": model}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
