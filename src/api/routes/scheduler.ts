/** Server groups and scheduler explain. PLACEHOLDER until the scheduler lands. */
import type { Route } from '../route.js';

export const schedulerRoutes: Route[] = [];
