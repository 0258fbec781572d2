"""LLM providers for the planner: OpenAI chat-completions (any compatible base URL) and Anthropic messages.

Layering: `server.planner.loop` drives a `Conversation` (provider-neutral: tools in, `ModelTurn` out,
tool outcomes fed back); each provider keeps the message history in its own wire shape and talks to the
model through its official SDK (`openai`, `anthropic`). The API key lives only in the SDK client, never
in a log line or an event.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from spec import json_limits

__all__ = [
    "PROVIDERS",
    "UNCONFIGURED_MESSAGE",
    "AnthropicConversation",
    "Conversation",
    "LlmConfig",
    "ModelTurn",
    "OpenAIConversation",
    "ToolCallRequest",
    "ToolOutcome",
    "ToolSpec",
    "open_conversation",
]

PROVIDERS = ("openai", "anthropic")
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}
UNCONFIGURED_MESSAGE = (
    "The planner has no LLM provider. Start the server with CORTEX_LLM_PROVIDER=openai or anthropic, "
    "CORTEX_LLM_MODEL (the model name), CORTEX_LLM_API_KEY, and for an OpenAI-compatible server "
    "(Ollama, vLLM, llama.cpp) CORTEX_LLM_BASE_URL, e.g. http://127.0.0.1:11434/v1."
)


@dataclass(frozen=True)
class LlmConfig:
    """The planner's provider settings, read once at app start (`from_env`)."""

    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    max_tokens: int = 4096

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LlmConfig:
        env = os.environ if env is None else env
        provider = (env.get("CORTEX_LLM_PROVIDER") or "").strip().lower() or None
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"CORTEX_LLM_PROVIDER must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        model = (env.get("CORTEX_LLM_MODEL") or "").strip() or (
            DEFAULT_MODELS[provider] if provider else None
        )
        return cls(
            provider=provider,
            model=model,
            base_url=(env.get("CORTEX_LLM_BASE_URL") or "").strip() or None,
            api_key=env.get("CORTEX_LLM_API_KEY") or None,
        )

    @property
    def configured(self) -> bool:
        return self.provider is not None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCallRequest:
    """One tool call the model asked for. `arguments` is None when `arguments_error` says why."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    arguments_error: str | None = None


@dataclass(frozen=True)
class ModelTurn:
    text: str
    tool_calls: list[ToolCallRequest]


@dataclass(frozen=True)
class ToolOutcome:
    call_id: str
    text: str
    is_error: bool
    images: list[tuple[str, str]] = field(default_factory=list)  # (mimeType, base64 data)


class Conversation(Protocol):
    async def next_turn(self, tools: list[ToolSpec]) -> ModelTurn: ...

    def add_tool_outcomes(self, outcomes: list[ToolOutcome]) -> None: ...

    async def aclose(self) -> None: ...


def _parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(raw, dict):
        return raw, None
    if raw is None or raw == "":
        return {}, None
    try:
        value = json_limits.loads(raw)
    except (TypeError, ValueError) as exc:  # a model's text: not JSON, or nested past the frame limit
        return (
            None,
            f"the arguments are not valid JSON ({exc}); send a JSON object matching the tool's schema",
        )
    if not isinstance(value, dict):
        return None, "the arguments must be a JSON object matching the tool's schema"
    return value, None


class OpenAIConversation:
    """Chat completions with function tools (OpenAI, Ollama, vLLM, llama.cpp server)."""

    def __init__(self, config: LlmConfig, system: str, goal: str) -> None:
        import openai

        self.config = config
        self.client = openai.AsyncOpenAI(
            api_key=config.api_key or "unused",
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=1,
        )
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": goal},
        ]

    async def next_turn(self, tools: list[ToolSpec]) -> ModelTurn:
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
                }
                for t in tools
            ]
        response = await self.client.chat.completions.create(
            model=self.config.model or DEFAULT_MODELS["openai"],
            messages=self.messages,  # type: ignore[arg-type]
            **kwargs,
        )
        message = response.choices[0].message
        calls: list[ToolCallRequest] = []
        wire_calls: list[dict[str, Any]] = []
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:
                continue
            arguments, problem = _parse_arguments(function.arguments)
            calls.append(ToolCallRequest(call.id, function.name, arguments, problem))
            wire_calls.append(
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": function.name, "arguments": function.arguments},
                }
            )
        assistant: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
        if wire_calls:
            assistant["tool_calls"] = wire_calls
        self.messages.append(assistant)
        return ModelTurn(message.content or "", calls)

    def add_tool_outcomes(self, outcomes: list[ToolOutcome]) -> None:
        images: list[dict[str, Any]] = []
        for outcome in outcomes:
            text = ("ERROR: " if outcome.is_error else "") + outcome.text
            self.messages.append({"role": "tool", "tool_call_id": outcome.call_id, "content": text})
            images += [
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
                for mime, data in outcome.images
            ]
        if images:
            # Tool messages carry text only; images go in a user message right after them.
            self.messages.append(
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Images from the tool results:"}, *images],
                }
            )

    async def aclose(self) -> None:
        await self.client.close()


class AnthropicConversation:
    """Anthropic messages with tool_use / tool_result blocks (images accepted inside tool results)."""

    def __init__(self, config: LlmConfig, system: str, goal: str) -> None:
        import anthropic

        self.config = config
        self.system = system
        self.client = anthropic.AsyncAnthropic(
            api_key=config.api_key or "unused",
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=1,
        )
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": goal}]

    async def next_turn(self, tools: list[ToolSpec]) -> ModelTurn:
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools
            ]
        response = await self.client.messages.create(
            model=self.config.model or DEFAULT_MODELS["anthropic"],
            max_tokens=self.config.max_tokens,
            system=self.system,
            messages=self.messages,  # type: ignore[arg-type]
            **kwargs,
        )
        texts: list[str] = []
        calls: list[ToolCallRequest] = []
        blocks: list[dict[str, Any]] = []
        for block in response.content:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text)  # type: ignore[union-attr]
                blocks.append({"type": "text", "text": block.text})  # type: ignore[union-attr]
            elif kind == "tool_use":
                arguments, problem = _parse_arguments(block.input)  # type: ignore[union-attr]
                calls.append(ToolCallRequest(block.id, block.name, arguments, problem))  # type: ignore[union-attr]
                blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})  # type: ignore[union-attr]
        self.messages.append({"role": "assistant", "content": blocks or [{"type": "text", "text": ""}]})
        return ModelTurn("\n".join(texts), calls)

    def add_tool_outcomes(self, outcomes: list[ToolOutcome]) -> None:
        results: list[dict[str, Any]] = []
        for outcome in outcomes:
            content: list[dict[str, Any]] = [{"type": "text", "text": outcome.text or "(no output)"}]
            content += [
                {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
                for mime, data in outcome.images
            ]
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": outcome.call_id,
                    "content": content,
                    "is_error": outcome.is_error,
                }
            )
        self.messages.append({"role": "user", "content": results})

    async def aclose(self) -> None:
        await self.client.close()


def open_conversation(config: LlmConfig, system: str, goal: str) -> Conversation:
    if config.provider == "openai":
        return OpenAIConversation(config, system, goal)
    if config.provider == "anthropic":
        return AnthropicConversation(config, system, goal)
    raise ValueError(UNCONFIGURED_MESSAGE)
