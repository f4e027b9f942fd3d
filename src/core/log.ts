/**
 * Structured logging: one JSON object per line on stderr. Callers pass fields,
 * never pre-formatted secrets; keys named like secrets are redacted here once.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_KEY = /pass(word)?|secret|token|authorization|credential|api_?key|^key$/i;

let threshold: Level = (process.env.NIMBUS_LOG_LEVEL as Level | undefined) ?? 'info';
export function setLogLevel(level: Level): void {
  threshold = level;
}

function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    out[k] = SECRET_KEY.test(k) ? '[redacted]' : v instanceof Error ? v.message : v;
  }
  return out;
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(component: string): Logger;
}

export function logger(component: string): Logger {
  const emit = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < ORDER[threshold]) return;
    const line = { time: new Date().toISOString(), level, component, msg, ...(fields ? redact(fields) : {}) };
    process.stderr.write(JSON.stringify(line) + '\n');
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (c) => logger(`${component}.${c}`),
  };
}
