/** The public errors live in the leaf module src/errors.ts (engine and tiers import it too); re-exported for frontends. */
export * from '../errors.js';
