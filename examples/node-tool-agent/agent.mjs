/**
 * A small tool-using agent: asks an OpenAI-compatible model with function calling,
 * runs the tool calls it makes, feeds results back as `tool` messages, and stops at
 * the first plain answer or after MAX_STEPS model calls.
 *
 * Event: { "question": "..." }
 * Env:   OPENAI_BASE_URL (required), OPENAI_API_KEY, OPENAI_MODEL (default "trenv-test").
 */
import { tools, runTool } from './tools.mjs';

const MAX_STEPS = 5;
const SYSTEM_PROMPT =
  'You are a careful assistant. Use the tools for any arithmetic or counting; never guess numbers. ' +
  'When you have the tool results, answer briefly.';

class LlmError extends Error {
  get name() { return 'LlmError'; }
}

async function chat(baseUrl, apiKey, body, signal) {
  const url = `${baseUrl.replace(/\/+$/, '')}/chat/completions`;
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    const reason = err.cause?.message ?? err.message;
    throw new LlmError(`could not reach ${url}: ${reason}. Is the model server running, and does the manifest have "network": "egress"?`);
  }
  const text = await response.text();
  if (!response.ok) {
    let detail = text;
    try { detail = JSON.parse(text).error.message; } catch { /* not OpenAI-shaped: keep the raw body */ }
    throw new LlmError(`${url} answered HTTP ${response.status}: ${detail}`);
  }
  return JSON.parse(text);
}

export async function handler(event, context) {
  const question = event?.question;
  if (typeof question !== 'string' || question.trim() === '') {
    throw new TypeError('event.question must be a non-empty string, e.g. {"question": "What is 6*7?"}');
  }
  const baseUrl = process.env.OPENAI_BASE_URL;
  if (!baseUrl) throw new LlmError('OPENAI_BASE_URL is not set: add it to "env" in trenv.json');
  const apiKey = process.env.OPENAI_API_KEY ?? '';
  const model = process.env.OPENAI_MODEL || 'trenv-test';
  // Stop waiting for the model a second before the sandbox deadline, to report a clean error.
  const signal = AbortSignal.timeout(Math.max(1000, Math.min(60_000, context.remainingMs() - 1000)));

  const messages = [
    { role: 'system', content: SYSTEM_PROMPT },
    { role: 'user', content: question },
  ];
  const definitions = Object.values(tools).map((t) => t.definition);
  const trace = [];
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };

  for (let step = 1; step <= MAX_STEPS; step++) {
    context.logger.info('model call', { step, messages: messages.length });
    const response = await chat(baseUrl, apiKey, { model, messages, tools: definitions, tool_choice: 'auto', temperature: 0 }, signal);
    for (const key of Object.keys(usage)) usage[key] += response.usage?.[key] ?? 0;
    const message = response.choices?.[0]?.message;
    if (!message) throw new LlmError(`unexpected response shape: ${JSON.stringify(response).slice(0, 300)}`);
    messages.push(message);

    if (!message.tool_calls?.length) {
      context.logger.info('final answer', { step, tools: trace.length });
      return { answer: message.content, steps: step, model: response.model ?? model, trace, usage };
    }
    for (const call of message.tool_calls) {
      const result = runTool(call.function.name, call.function.arguments);
      context.logger.info('tool', { step, tool: call.function.name, arguments: call.function.arguments, result });
      trace.push({ step, tool: call.function.name, arguments: call.function.arguments, result });
      messages.push({ role: 'tool', tool_call_id: call.id, content: JSON.stringify(result) });
    }
  }
  context.logger.warn('no final answer', { maxSteps: MAX_STEPS });
  return { answer: null, steps: MAX_STEPS, stoppedBy: 'max_steps', model, trace, usage };
}
