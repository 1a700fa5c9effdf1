#!/usr/bin/env node
// A small castrad client in Node, the way a VS Code extension would talk to castrad: a
// starting point (proto-docs/PROTOCOL.md, "Clients").
//
// Calls are HTTP POSTs on castrad's Unix socket (node's `http`), the live feed is a WebSocket
// on the same socket (npm `ws`), and every result and event is checked against the OpenRPC
// document castrad serves (`rpc.discover`, npm `ajv`), which also lists the methods.
// `npm ci` in this directory installs ws and ajv (pinned by package-lock.json).
//
//   castra-client.js methods                      the methods castrad serves, one JSON line
//   castra-client.js plan CONFIG [OVERRIDE...]    the plan
//   castra-client.js up CONFIG [OVERRIDE...]      each event of the run, then {"outcome": ...};
//                                                 exit 1 if a VM failed
//   castra-client.js outcome OPERATION            how each VM of an operation ended
//   castra-client.js status [CONFIG]              the daemon and its projects
//   castra-client.js logs CONFIG VM [RUN]         a VM's durable logs
//
// The socket is $CASTRA_SOCKET, else $XDG_RUNTIME_DIR/castra/castrad.sock. On stderr it says
// how many messages it validated. A JSON-RPC error is printed on stderr and exits 2.
'use strict';

const http = require('http');
const path = require('path');
const WebSocket = require('ws');
const Ajv2020 = require('ajv/dist/2020');

const TERMINAL = ['BootstrapCompleted', 'BootstrapFailed'];

class RpcError extends Error {
  constructor(error) {
    super(`${error.code}: ${error.message}`);
    this.error = error;
  }
}

class Castra {
  constructor(socketPath) {
    this.socketPath = socketPath;
    this.nextId = 0;
    this.validated = 0;
  }

  // One JSON-RPC call: an HTTP POST on the socket.
  callRaw(method, params) {
    const body = JSON.stringify({ jsonrpc: '2.0', id: ++this.nextId, method, params });
    return new Promise((resolve, reject) => {
      const request = http.request(
        { socketPath: this.socketPath, path: '/', method: 'POST',
          headers: { 'content-type': 'application/json' } },
        (response) => {
          const chunks = [];
          response.on('data', (c) => chunks.push(c));
          response.on('end', () => {
            try {
              const reply = JSON.parse(Buffer.concat(chunks).toString('utf8'));
              if (reply.error) reject(new RpcError(reply.error));
              else resolve(reply.result);
            } catch (e) {
              reject(e);
            }
          });
        });
      request.on('error', reject);
      request.end(body);
    });
  }

  // Reads the served description: one validator per method result, one for events.
  async discover() {
    this.document = await this.callRaw('rpc.discover', {});
    // strict: false lets the document's own keywords (x-…, integer formats) through.
    const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false });
    const compile = (schema) => ajv.compile({ ...schema, components: this.document.components });
    this.results = {};
    for (const method of this.document.methods) {
      if (method.name === 'castra.event') {
        this.eventValidator = compile(method.params.find((p) => p.name === 'result').schema);
      } else if (method.result) {
        this.results[method.name] = compile(method.result.schema);
      }
    }
  }

  check(validate, value, what) {
    if (!validate(value)) {
      const e = validate.errors[0];
      throw new Error(`${what} does not match the schema at ${e.instancePath || '/'}: ${e.message}`);
    }
    this.validated += 1;
  }

  async call(method, params) {
    const result = await this.callRaw(method, params);
    this.check(this.results[method], result, `the result of ${method}`);
    return result;
  }

  // Starts `up` with a subscription already open, emits this operation's events until every
  // VM has its terminal event, then returns castra.outcome (the authority).
  async up(config, overrides, emit) {
    const ws = new WebSocket(`ws+unix://${this.socketPath}:/`);
    const queue = [];
    let wake = null;
    let failure = null;
    ws.on('message', (data) => { queue.push(JSON.parse(data.toString('utf8'))); if (wake) wake(); });
    ws.on('error', (e) => { failure = e; if (wake) wake(); });
    ws.on('close', () => { failure = failure || new Error('castrad closed the WebSocket'); if (wake) wake(); });
    const next = async () => {
      while (!queue.length) {
        if (failure) throw failure;
        await new Promise((r) => { wake = r; });
        wake = null;
      }
      return queue.shift();
    };
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    try {
      ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'castra.subscribeEvents', params: {} }));
      const reply = await next();
      if (reply.error) throw new RpcError(reply.error);
      const started = await this.call('castra.up', { config, bootstrap: overrides });
      const waiting = new Set(started.vms);
      while (waiting.size) {
        const message = await next();
        if (message.method !== 'castra.event') continue;
        const envelope = message.params.result;
        this.check(this.eventValidator, envelope, 'an event');
        if (envelope.operation !== started.operation) continue;
        emit({ event: envelope });
        // Unknown kinds are fine (newer castrad): shown, and the feed goes on.
        const [kind] = Object.keys(envelope.event);
        if (TERMINAL.includes(kind)) waiting.delete(envelope.event[kind].vm);
      }
      return await this.call('castra.outcome', { operation: started.operation });
    } finally {
      ws.close();
    }
  }
}

function socketPath() {
  if (process.env.CASTRA_SOCKET) return process.env.CASTRA_SOCKET;
  return path.join(process.env.XDG_RUNTIME_DIR, 'castra', 'castrad.sock');
}

async function main(argv) {
  const [command, ...args] = argv;
  const emit = (value) => process.stdout.write(JSON.stringify(value) + '\n');
  const castra = new Castra(socketPath());
  await castra.discover();
  let code = 0;
  try {
    switch (command) {
      case 'methods':
        emit(castra.document.methods.map((m) => ({ name: m.name, summary: m.summary || null })));
        break;
      case 'plan':
        emit(await castra.call('castra.plan', { config: path.resolve(args[0]), bootstrap: args.slice(1) }));
        break;
      case 'up': {
        const outcome = await castra.up(path.resolve(args[0]), args.slice(1), emit);
        emit({ outcome });
        if (outcome.outcomes.some((o) => o.status === 'Failed' || o.status === 'Rejected')) code = 1;
        break;
      }
      case 'outcome':
        emit(await castra.call('castra.outcome', { operation: args[0] }));
        break;
      case 'status':
        emit(await castra.call('castra.status', args.length ? { config: path.resolve(args[0]) } : {}));
        break;
      case 'logs': {
        const params = { config: path.resolve(args[0]), vm: args[1] };
        if (args.length > 2) params.run = args[2];
        emit(await castra.call('castra.logs', params));
        break;
      }
      default:
        process.stderr.write('usage: castra-client.js methods|plan|up|outcome|status|logs ...\n');
        return 2;
    }
  } catch (e) {
    if (!(e instanceof RpcError)) throw e;
    process.stderr.write(`castra-client: error ${JSON.stringify(e.error)}\n`);
    code = 2;
  }
  process.stderr.write(`castra-client: ${castra.validated} messages validated against the served schema\n`);
  return code;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e) => { process.stderr.write(`castra-client: ${e.message}\n`); process.exitCode = 1; });
