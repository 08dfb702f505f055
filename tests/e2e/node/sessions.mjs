// Responses API WebSocket sessions through canary with the openai Node SDK (ResponsesWS).
// Usage: node sessions.mjs BASE_URL API_KEY COUNT; prints one JSON line of the usage seen.
// (The Node SDK's Realtime client always dials wss://, so it needs a TLS endpoint.)
import OpenAI from 'openai';
import { ResponsesWS } from 'openai/resources/responses/ws';

const [baseURL, apiKey, count] = process.argv.slice(2);
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

const users = Array.from({ length: Number(count) }, (_, i) => `node-user-${i}`);
const timer = setTimeout(() => { console.error('timed out'); process.exit(2); }, 20000);
const usages = await Promise.all(users.map(responses));
clearTimeout(timer);
console.log(JSON.stringify(usages));
