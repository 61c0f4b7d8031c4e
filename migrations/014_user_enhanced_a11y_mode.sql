-- 014: user preference for the enhanced accessibility mode; NULL means not chosen.

ALTER TABLE "user" ADD COLUMN "enhancedA11yMode" BOOLEAN;
