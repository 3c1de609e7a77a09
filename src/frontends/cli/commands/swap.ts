import type { Command } from 'commander';
import type { Ctx } from '../main.js';

export function registerSwap(program: Command, ctx: Ctx): void {
  void program; void ctx; // not yet implemented
}
