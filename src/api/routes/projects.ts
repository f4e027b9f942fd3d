import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Empty, Name, ProjectRef } from '../schemas.js';

const Project = Type.Object({
  id: Type.String(), name: Type.String(), path: Type.String(), parentId: Type.Union([Type.String(), Type.Null()]), createdAt: Type.String(),
}, { $id: 'Project' });
const Role = Type.Union([Type.Literal('reader'), Type.Literal('member'), Type.Literal('admin')]);
const Grant = Type.Object({ user: Type.String(), project: Type.String(), role: Type.String(), createdAt: Type.String(), inheritedFrom: Type.Optional(Type.Union([Type.String(), Type.Null()])) });
const ProjectParam = Type.Object({ project: ProjectRef('Project id, path (org/team, URL-encoded) or name') });
const PROJECT = { param: 'project', kind: 'project' };

export const projectRoutes = [
  route({
    method: 'POST', path: '/projects', operationId: 'createProject', tag: 'projects', access: 'write',
    // Creating a child is its parent's admins' business; a root project, the system's.
    auth: { role: 'admin', project: { body: 'parent' } },
    summary: 'Create a project, at the root or under a parent (names are unique among siblings)', status: 201,
    body: Type.Object({ name: Name(), parent: Type.Optional(ProjectRef('Parent id, path or name (omit it for a root project)')) }, { additionalProperties: false }),
    response: Project,
    handler: async ({ body, services, auth }) => ({ status: 201, body: await services.projects.create(body.name, auth.projectId ?? null) }),
  }),
  route({
    method: 'GET', path: '/projects', operationId: 'listProjects', tag: 'projects', access: 'read', auth: { authenticated: true },
    summary: 'The projects the caller can read, in tree order (by path)', response: Type.Array(Project),
    handler: ({ services, auth }) => services.projects.list((id) => auth.canRead(id)),
  }),
  route({
    method: 'GET', path: '/projects/{project}', operationId: 'inspectProject', tag: 'projects', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'A project with its children, resource counts and role grants (own and inherited)', params: ProjectParam,
    response: Type.Object({
      project: Project, children: Type.Array(Project), containers: Type.Integer(), images: Type.Integer(), roles: Type.Array(Grant),
    }),
    handler: async ({ services, auth }) => {
      const id = auth.project();
      const children = await services.store.projects.children(id);
      return {
        project: await services.projects.view((await services.store.projects.get(id))!),
        children: await Promise.all(children.map((c) => services.projects.view(c))),
        containers: (await services.store.containers.list({ projectId: id })).length,
        images: (await services.store.images.list(id)).length,
        roles: await services.projects.grants(id),
      };
    },
  }),
  route({
    method: 'DELETE', path: '/projects/{project}', operationId: 'removeProject', tag: 'projects', access: 'write',
    auth: { role: 'admin', project: PROJECT, on: 'parent' },
    summary: 'Remove a project; refused (Conflict) while it has child projects or resources', params: ProjectParam, response: Empty,
    handler: async ({ services, auth }) => {
      await services.projects.assertRemovable(auth.project());
      await services.networks.removeDefault(auth.project());
      await services.projects.remove(auth.project());
      return { status: 204 };
    },
  }),
  route({
    method: 'GET', path: '/projects/{project}/roles', operationId: 'listRoles', tag: 'projects', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Who holds which role on the project, directly or inherited from an ancestor', params: ProjectParam, response: Type.Array(Grant),
    handler: ({ services, auth }) => services.projects.grants(auth.project()),
  }),
  route({
    method: 'PUT', path: '/projects/{project}/roles/{user}', operationId: 'grantRole', tag: 'projects', access: 'write',
    auth: { role: 'admin', project: PROJECT },
    summary: 'Grant a user a role on the project (and so on its descendants); replaces the user\'s role there',
    params: Type.Object({ project: ProjectParam.properties.project, user: Name() }),
    body: Type.Object({ role: Role }, { additionalProperties: false }), response: Grant,
    handler: ({ params, body, services, auth }) => services.projects.grant(params.user, auth.project(), body.role),
  }),
  route({
    method: 'DELETE', path: '/projects/{project}/roles/{user}', operationId: 'revokeRole', tag: 'projects', access: 'write',
    auth: { role: 'admin', project: PROJECT },
    summary: "Revoke the user's role on the project (inherited roles stay)",
    params: Type.Object({ project: ProjectParam.properties.project, user: Name() }), response: Empty,
    handler: async ({ params, services, auth }) => {
      await services.projects.revoke(params.user, auth.project());
      return { status: 204 };
    },
  }),
];
