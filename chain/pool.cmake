# The pool (templates, clones, snapshots) is part of cc_chain; chain/CMakeLists.txt includes
# this file so the pool code can grow without touching the chain engineer's list.
target_sources(cc_chain PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/pool.c
  ${CMAKE_CURRENT_LIST_DIR}/pool-records.c
  ${CMAKE_CURRENT_LIST_DIR}/pool-export.c)
