// tldraw's data model (migrations/ 001-020) as a Zero 1.9 schema, with the app's mutators
// and a few named queries. Shared by the app server (server.mjs) and, later, real clients.
// Server-side rules: only a file's owner renames, shares, unshares or deletes it; anyone may
// open a shared file (which creates their file_state); users only change their own profile.
import {
  createSchema,
  table,
  string,
  number,
  boolean,
  relationships,
  createBuilder,
  defineQueries,
  defineQuery,
  defineMutators,
  defineMutator,
  ApplicationError,
} from '@rocicorp/zero';

const user = table('user')
  .columns({
    id: string(),
    name: string(),
    email: string(),
    avatar: string(),
    color: string(),
    exportFormat: string(),
    exportTheme: string(),
    exportBackground: boolean(),
    exportPadding: boolean(),
    createdAt: number(),
    updatedAt: number(),
    flags: string(),
    locale: string().optional(),
    animationSpeed: number().optional(),
    edgeScrollSpeed: number().optional(),
    colorScheme: string().optional(),
    isSnapMode: boolean().optional(),
    isWrapMode: boolean().optional(),
    isDynamicSizeMode: boolean().optional(),
    isPasteAtCursorMode: boolean().optional(),
    enhancedA11yMode: boolean().optional(),
    areKeyboardShortcutsEnabled: boolean().optional(),
    showUiLabels: boolean().optional(),
  })
  .primaryKey('id');

const file = table('file')
  .columns({
    id: string(),
    name: string(),
    ownerId: string(),
    thumbnail: string(),
    shared: boolean(),
    sharedLinkType: string(),
    published: boolean(),
    lastPublished: number(),
    publishedSlug: string(),
    createdAt: number(),
    updatedAt: number(),
    isEmpty: boolean(),
    isDeleted: boolean(),
    createSource: string().optional(),
  })
  .primaryKey('id');

const fileState = table('file_state')
  .columns({
    userId: string(),
    fileId: string(),
    firstVisitAt: number().optional(),
    lastEditAt: number().optional(),
    lastSessionState: string().optional(),
    lastVisitAt: number().optional(),
    isFileOwner: boolean().optional(),
    isPinned: boolean().optional(),
  })
  .primaryKey('userId', 'fileId');

const fileRelationships = relationships(file, ({one, many}) => ({
  owner: one({sourceField: ['ownerId'], destField: ['id'], destSchema: user}),
  states: many({sourceField: ['id'], destField: ['fileId'], destSchema: fileState}),
}));

const fileStateRelationships = relationships(fileState, ({one}) => ({
  file: one({sourceField: ['fileId'], destField: ['id'], destSchema: file}),
}));

export const schema = createSchema({
  tables: [user, file, fileState],
  relationships: [fileRelationships, fileStateRelationships],
});

const zql = createBuilder(schema);

export const queries = defineQueries({
  me: defineQuery(({ctx}) => zql.user.where('id', ctx.userID).one()),
  // The files in a user's list: those they have a file_state for, not deleted.
  myFiles: defineQuery(({ctx}) =>
    zql.file_state
      .where('userId', ctx.userID)
      .whereExists('file', q => q.where('isDeleted', false))
      .related('file'),
  ),
});

function mustBeSignedIn(ctx) {
  if (!ctx?.userID) throw new ApplicationError('Sign in first');
  return ctx.userID;
}

async function mustOwn(tx, userID, id) {
  const f = await tx.run(zql.file.where('id', id).one());
  if (!f) throw new ApplicationError(`No file ${id}`, {details: {id}});
  if (f.ownerId !== userID) throw new ApplicationError(`Only the owner may change file ${id}`, {details: {id}});
  return f;
}

export const mutators = defineMutators({
  user: {
    // Preferences: any subset of the user's optional and export columns.
    updatePreferences: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      if (args.id !== userID) throw new ApplicationError('Users may only change their own preferences');
      await tx.mutate.user.update({...args, updatedAt: args.updatedAt ?? Date.now()});
    }),
  },
  file: {
    create: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      const time = args.time ?? Date.now();
      await tx.mutate.file.insert({
        id: args.id,
        name: args.name ?? '',
        ownerId: userID,
        thumbnail: '',
        shared: true,
        sharedLinkType: 'edit',
        published: false,
        lastPublished: 0,
        publishedSlug: args.id,
        createdAt: time,
        updatedAt: time,
        isEmpty: true,
        isDeleted: false,
        createSource: args.createSource,
      });
      await tx.mutate.file_state.insert({
        userId: userID,
        fileId: args.id,
        firstVisitAt: time,
        lastVisitAt: time,
        isFileOwner: true,
      });
    }),
    rename: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      if (tx.location === 'server') await mustOwn(tx, userID, args.id);
      await tx.mutate.file.update({id: args.id, name: args.name, updatedAt: args.time ?? Date.now()});
    }),
    // Unsharing fires the delete_file_states trigger upstream: guests lose their file_state.
    setShared: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      if (tx.location === 'server') await mustOwn(tx, userID, args.id);
      await tx.mutate.file.update({id: args.id, shared: args.shared, ...(args.sharedLinkType ? {sharedLinkType: args.sharedLinkType} : {})});
    }),
    // The owner soft-deletes the file; a guest only forgets it.
    deleteOrForget: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      const f = await tx.run(zql.file.where('id', args.id).one());
      if (f && f.ownerId === userID) {
        await tx.mutate.file.update({id: args.id, isDeleted: true});
      }
      await tx.mutate.file_state.delete({userId: userID, fileId: args.id});
    }),
  },
  fileState: {
    // Opening a file: guests may open shared files only.
    visit: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      const time = args.time ?? Date.now();
      if (tx.location === 'server') {
        const f = await tx.run(zql.file.where('id', args.fileId).one());
        if (!f || f.isDeleted) throw new ApplicationError(`No file ${args.fileId}`);
        if (f.ownerId !== userID && !f.shared) throw new ApplicationError(`File ${args.fileId} is not shared`);
      }
      const existing = await tx.run(zql.file_state.where('userId', userID).where('fileId', args.fileId).one());
      if (existing) {
        await tx.mutate.file_state.update({userId: userID, fileId: args.fileId, lastVisitAt: time});
      } else {
        await tx.mutate.file_state.insert({userId: userID, fileId: args.fileId, firstVisitAt: time, lastVisitAt: time, isFileOwner: false});
      }
    }),
    setPinned: defineMutator(async ({tx, args, ctx}) => {
      const userID = mustBeSignedIn(ctx);
      await tx.mutate.file_state.update({userId: userID, fileId: args.fileId, isPinned: args.isPinned});
    }),
  },
});
