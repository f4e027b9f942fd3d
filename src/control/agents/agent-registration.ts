/**
 * Admitting an agent (`POST /agents`, `nimbusd agent` on every start): its name, url, token and
 * protocol versions checked, then the agent probed at its url (it must answer, under the name it
 * gives, with the token it gave) before its row is stored. The checks of a name and of protocol
 * versions serve the join-token redemption too (join-tokens.ts).
 */
import { Conflict, InvalidArgument, Unavailable, Unreachable, logMessage, toNimbusError } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import type { Agent, AgentInfo } from '../../agent/agent.js';
import type { AgentRegistrationRecord, Store } from '../../store/store.js';
import type { AgentRecord } from '../../store/records.js';
import { CONTROL_PLANE_CERT_NAME, MIGRATION_CERT_PREFIX, SPOKEN_PROTOCOL, negotiateProtocol, type ProtocolRange } from '../../agent/remote/agent-protocol.js';
import type { AgentConnector } from './agent-connections.js';
import { factsOf } from './host-facts.js';

export interface AgentRegistration {
  name: string;
  url: string;
  token: string;
  /** The versions the agent speaks; absent: an agent from before versions (protocol 1). */
  protocol?: ProtocolRange;
}

/** A name an agent may take: valid, and neither the embedded agent's nor the control plane's nor a migration's certificate name. */
export function checkAgentName(name: string, localName: string): void {
  if (!isValidName(name)) throw new InvalidArgument(`invalid agent name "${name}"`);
  if (name === localName) throw new Conflict(`"${name}" is the embedded agent's name`);
  if (name === CONTROL_PLANE_CERT_NAME) throw new InvalidArgument(`"${name}" is the control plane's own certificate name`);
  // a migration's certificate for agent X is named "migration.X": no agent may answer to such a name
  if (name.startsWith(MIGRATION_CERT_PREFIX)) throw new InvalidArgument(`agent names do not begin with "${MIGRATION_CERT_PREFIX}" (live migrations' certificates are named so)`);
}

/** A refusal with both sides' versions; no call is made to an agent that speaks none of ours. */
export function checkProtocol(name: string, theirs: ProtocolRange | undefined): void {
  if (!theirs) {
    throw new Conflict(`agent ${name} sent no protocol versions, so it speaks agent protocol 1; this control plane speaks ${SPOKEN_PROTOCOL.min}..${SPOKEN_PROTOCOL.max}: upgrade the agent`, {
      agent: name,
      ours: SPOKEN_PROTOCOL,
    });
  }
  negotiateProtocol(SPOKEN_PROTOCOL, theirs, { ours: 'this control plane', theirs: `agent ${name}` });
}

/** What the directory lends a registration. */
export interface AdmissionDeps {
  store: Pick<Store, 'agents' | 'transaction'>;
  connect: AgentConnector;
  localName: string;
  /** Whether this control plane has an agent CA (TCP agents need one). */
  hasCa: boolean;
  now: () => number;
}

/** An admitted agent: its stored row, what it answered, and the connection it answered on (to be kept). */
export interface Admitted {
  rec: AgentRecord;
  info: AgentInfo;
  probe: Agent & { close(): Promise<void> };
}

/**
 * The registration checked, the agent probed, and its row stored with its facts (a previous
 * registration of the name replaced, its host settings kept). On a refusal the probe is closed.
 */
export async function admitAgent(req: AgentRegistration, deps: AdmissionDeps): Promise<Admitted> {
  checkAgentName(req.name, deps.localName);
  if (/^http:\/\//.test(req.url)) throw new InvalidArgument(`agent url "${req.url}": TCP agents are reached over TLS only (https://, a certificate from nimbusd agent --join-token); plain HTTP is for unix sockets`);
  if (!/^(https:\/\/[^/\s]+\/?|unix:\/\S+)$/.test(req.url)) throw new InvalidArgument(`agent url must be https://HOST:PORT or unix:/PATH, got "${req.url}"`);
  if (req.url.startsWith('https:') && !deps.hasCa) throw new Conflict('this control plane has no agent CA, so it cannot reach TCP agents');
  if (req.token.length < 16) throw new InvalidArgument('agent token too short (at least 16 characters)');
  checkProtocol(req.name, req.protocol);
  const reg: AgentRegistrationRecord = { name: req.name, url: req.url, token: req.token, registeredAt: new Date(deps.now()).toISOString() };
  let probe: Agent & { close(): Promise<void> };
  try {
    probe = deps.connect({ ...reg, zone: 'default', labels: {}, disabled: null, allocationRatios: {}, facts: null });
  } catch (e) {
    throw new InvalidArgument(`agent ${req.name} at ${req.url}: ${toNimbusError(e).message}`, { agent: req.name });
  }
  let info: AgentInfo;
  try {
    info = await probe.info();
  } catch (e) {
    await probe.close();
    const err = toNimbusError(e);
    // the agent speaks no version of ours: its own words, naming both
    if (err.code === 'Conflict') throw err;
    // 502, not 503: the control plane is up; what the request named is not
    // the registrant named the URL; what the transport said of it (the address it resolved to) is an administrator's
    throw new Unreachable(`agent ${req.name} at ${req.url} does not answer: ${err.message}`, { agent: req.name }, { adminMessage: `agent ${req.name} at ${req.url} does not answer: ${logMessage(err)}` });
  }
  if (info.name !== req.name) {
    await probe.close();
    throw new InvalidArgument(`the agent at ${req.url} calls itself "${info.name}", not "${req.name}"`);
  }
  let rec: AgentRecord | undefined;
  try {
    const facts = factsOf(info, deps.now());
    const { store } = deps;
    rec = await store.transaction(async () => {
      await store.agents.put({ ...reg, facts });
      await store.agents.recordFacts(reg.name, facts);
      return store.agents.get(reg.name);
    });
  } catch (e) {
    await probe.close().catch(() => undefined);
    throw e;
  }
  if (!rec) {
    await probe.close().catch(() => undefined);
    throw new Unavailable(`agent ${req.name}: its row went away while it registered`);
  }
  return { rec, info, probe };
}
