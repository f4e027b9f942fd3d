import { networkDriverConformance } from './network-driver-conformance.js';

networkDriverConformance('bridge');
