/** One DNS label: 1-63 letters, digits and '-', not starting or ending with '-'. */
const LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** RFC 1123 host name: dot-separated labels, maxLength characters in all (253 for DNS; 63 for a UTS name). */
export function isHostname(s: string, maxLength = 253): boolean {
  return s.length > 0 && s.length <= maxLength && s.split('.').every((l) => LABEL.test(l));
}

/** A loopback name or address (localhost, 127.0.0.0/8, ::1), with or without a port or brackets. */
export function isLoopbackHost(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return name === 'localhost' || name === '::1' || /^127\.\d+\.\d+\.\d+$/.test(name);
}
