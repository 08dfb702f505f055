// WebSocket sessions through canary with the openai Node SDK: Responses (ResponsesWS) and
// Realtime (OpenAIRealtimeWS). Prints one JSON line: the usage each session's client read.
// Usage: node sessions.mjs BASE_URL API_KEY COUNT [REALTIME_BASE_URL]
// The Realtime client always dials wss://, so REALTIME_BASE_URL is a TLS endpoint in front
// of canary (the test's), trusted through NODE_EXTRA_CA_CERTS; without it, none is opened.
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { ResponsesWS } from 'openai/resources/responses/ws';

const [baseURL, apiKey, count, realtimeURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey });

function responses(user) {
  return new Promise((resolve, reject) => {
    const ws = new ResponsesWS(client, { headers: { 'x-user-id': user } });
    ws.on('error', reject);
    ws.on('response.completed', (event) => {
      ws.close();
      resolve([event.response.usage.input_tokens, event.response.usage.output_tokens]);
    });
    ws.send({ type: 'response.create', model: 'gpt-4.1', input: 'say hello' });
  });
}

function realtime(user) {
  const tls = new OpenAI({ baseURL: realtimeURL, apiKey });
  return new Promise((resolve, reject) => {
    const rt = new OpenAIRealtimeWS(
      { model: 'gpt-realtime', options: { headers: { 'x-user-id': user } } }, tls);
    rt.on('error', reject);
    rt.socket.on('open', () => {
      rt.send({
        type: 'conversation.item.create',
        item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'say hello' }] },
      });
      rt.send({ type: 'response.create' });
    });
    rt.on('response.done', (event) => {
      rt.close();
      resolve([event.response.usage.input_tokens, event.response.usage.output_tokens]);
    });
  });
}

const users = Array.from({ length: Number(count) }, (_, i) => `node-user-${i}`);
const timer = setTimeout(() => { console.error('timed out'); process.exit(2); }, 20000);
const sessions = users.map((user, i) => (realtimeURL && i % 2 ? realtime(user) : responses(user)));
const usages = await Promise.all(sessions);
clearTimeout(timer);
console.log(JSON.stringify(usages));
